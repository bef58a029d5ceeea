"""Class 2 of issue 23: two processes, one folder. The second training, predict or preparation on
a folder another live process is writing gets one line naming the holder and exit 2; the lock
goes when the holder ends, and a killed holder's lock is stale (the next command takes over)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unet.lock import lock_path
from unet.predict.cli import main as predict_main

from ..conftest import REPO
from ..helpers.experiments import em_args, make_experiment, pair_folder, trainer_in_process
from .helpers import error_line, script_main, tiny_state, write_checkpoint


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_and_freeze(args: list[str], cwd: Path, lock: Path) -> subprocess.Popen:
    """Start ``python *args`` and stop it (SIGSTOP) as soon as it holds ``lock``."""
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not lock.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first process never took its lock"
        time.sleep(0.002)
    process.send_signal(signal.SIGSTOP)
    holder = json.loads(lock.read_text())
    assert holder["pid"] == process.pid
    return process


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    process.send_signal(signal.SIGCONT)
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.send_signal(signal.SIGCONT)
    process.communicate(timeout=60)


def test_second_predict_into_one_output_dir_is_refused_and_a_killed_ones_lock_is_stale(tmp_path: Path,
                                                                                     capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "best.pt", tiny_state("EM"))
    (tmp_path / "in").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "in" / "big.png")
    out = tmp_path / "out"
    command = ["-m", "unet.predict", "-m", str(checkpoint), "-i", str(tmp_path / "in"), "-o", str(out),
               "--prepared", "--device", "cpu", "--no-progress"]
    first = start_and_freeze(command, tmp_path, lock_path(out))
    try:  # the second process is this one
        status = predict_main(command[2:])
        error_line(status, capsys.readouterr().err, str(out), "in use by process", str(first.pid),
                   "python -m unet.predict")
    finally:
        done = finish(first)
    assert done.returncode == 0, done.stderr
    assert not lock_path(out).exists()  # released on exit
    # a holder killed with SIGKILL leaves its lock behind: stale, taken over by the next run
    first = start_and_freeze([*command, "--overwrite"], tmp_path, lock_path(out))
    kill(first)
    assert lock_path(out).exists()
    assert predict_main([*command[2:], "--overwrite"]) == 0, capsys.readouterr().err
    assert not lock_path(out).exists()


def test_second_training_in_one_run_folder_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    folder = make_experiment(tmp_path)
    command = ["em_unet.py", "-f", "config.yaml", "-t", "UNET", "--no-progress", *em_args(data)]
    lock = lock_path(folder / "runs" / "exp")
    first = start_and_freeze(command, folder, lock)
    try:
        status = trainer_in_process(monkeypatch, folder, command[1:])
        error_line(status, capsys.readouterr().err, "run folder", "in use by process", str(first.pid), "em_unet.py")
        assert not (folder / "runs" / "exp-2").exists()
    finally:
        done = finish(first)
    assert done.returncode == 0, done.stderr
    assert (folder / "runs" / "exp" / "summary.json").is_file() and not lock.exists()


def test_second_preparation_of_one_folder_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "data"
    command = ["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "6", "--synthetic-size", "256",
               "--resize", "0", "--crop", "16", "--out", str(out)]
    first = start_and_freeze(command, REPO, lock_path(out))
    try:
        status = script_main(command[0])(command[1:])
        error_line(status, capsys.readouterr().err, str(out), "in use by process", str(first.pid), "em_prepare.py")
    finally:
        done = finish(first)
    assert done.returncode == 0, done.stderr
    assert (out / "prepare.json").is_file() and not lock_path(out).exists()


@pytest.mark.parametrize("holder", ["dead_pid", "garbage"])
def test_a_stale_or_unreadable_old_lock_does_not_block(tmp_path: Path, holder: str) -> None:
    from unet.lock import FolderLock

    folder = tmp_path / "out"
    lock = lock_path(folder)
    if holder == "dead_pid":
        child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        import socket

        lock.write_text(json.dumps({"pid": int(child.stdout), "host": socket.gethostname(), "command": "x",
                                    "since": "then"}))
    else:
        lock.write_text("\0\0garbage")
        old = time.time() - 60
        os.utime(lock, (old, old))
    with FolderLock(folder, "output folder"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_writable_folder_in_a_read_only_parent_is_locked_inside(tmp_path: Path, monkeypatch) -> None:
    import unet.lock as lock_module

    folder = tmp_path / "out"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(lock_module.os, "access", lambda path, mode: Path(path) != tmp_path and real(path, mode))
    with lock_module.FolderLock(folder, "output folder") as lock:
        assert lock.path == folder / ".unet.lock" and lock.path.is_file()
        with pytest.raises(lock_module.LockedError, match=f"in use by process {os.getpid()}"):
            lock_module.FolderLock(folder, "output folder").acquire()
    assert not (folder / ".unet.lock").exists() and not lock_path(folder).exists()
