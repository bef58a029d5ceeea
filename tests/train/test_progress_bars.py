"""Quiet when not at a terminal (issue 17 item 4): progress bars only on a terminal, switched off
by ``--no-progress`` or ``UNET_NO_PROGRESS=1``, and ``train.log`` the same either way."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from tqdm import tqdm

from unet.progress import ENV_VAR, bar_disable

from ..conftest import REPO
from ..helpers.experiments import TINY, make_experiment, prepare_synthetic_em

BAR_MARKS = re.compile(r"\r|\x1b\[|%\|")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drawn(disable: bool | None) -> str:
    stream = FakeTerminal()
    for _ in tqdm(range(3), file=stream, disable=disable, mininterval=0):
        pass
    return stream.getvalue()


def test_bar_disable_follows_the_terminal_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert "3/3" in drawn(bar_disable())
    assert drawn(bar_disable(hide=True)) == ""
    for value, shown in (("1", False), ("yes", False), ("0", True), ("", True)):
        monkeypatch.setenv(ENV_VAR, value)
        assert ("3/3" in drawn(bar_disable())) is shown, value
    monkeypatch.delenv(ENV_VAR)
    not_a_terminal = io.StringIO()
    for _ in tqdm(range(3), file=not_a_terminal, disable=bar_disable()):
        pass
    assert not_a_terminal.getvalue() == ""


def run_on_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run ``python *args`` with stdout and stderr on a pseudo-terminal; its exit status and output."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 0 columns: empty bars
    process = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side was closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=600), b"".join(chunks).decode("utf-8", "replace")


def log_lines(run_dir: Path) -> list[str]:
    """train.log without the time stamps and what differs between runs (run id, folder, seconds)."""
    lines = []
    for line in (run_dir / "train.log").read_text().splitlines():
        line = line.split("  ", 1)[1]
        line = re.sub(r"run id \w+", "run id ID", line)
        line = re.sub(r"\S*/runs/\w+", "RUN", line)
        lines.append(re.sub(r"  [\d.]+s$", "", line))
    return lines


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("quiet")
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return {"folder": make_experiment(root), "data": prepare_synthetic_em(root / "em"), "env": env}


def train_args(setup: dict[str, object], name: str, *extra: str) -> list[str]:
    return ["em_unet.py", "-f", "config.yaml", *TINY, "-o", f"dataset_path={setup['data']}", "-o", "num_epochs=1",
            "-o", "overlay_every=5", "-o", f"experiment_name={name}", *extra]


def test_redirected_output_has_no_bars_and_the_same_log_as_a_terminal(setup: dict[str, object]) -> None:
    folder: Path = setup["folder"]
    with open(folder / "out.txt", "w") as out, open(folder / "err.txt", "w") as err:
        status = subprocess.run([sys.executable, *train_args(setup, "to_file")], cwd=folder, env=setup["env"],
                                stdout=out, stderr=err, timeout=600).returncode
    assert status == 0
    stdout, stderr = (folder / "out.txt").read_text(), (folder / "err.txt").read_text()
    assert not BAR_MARKS.search(stdout + stderr) and stderr == ""
    # one line per log message: what the terminal shows is what train.log holds
    assert len(stdout.splitlines()) == len(log_lines(folder / "runs" / "to_file"))

    status, shown = run_on_terminal(train_args(setup, "on_terminal"), folder, setup["env"])
    assert status == 0
    assert "%|" in shown and "\r" in shown  # the bars are there on a terminal ...
    assert log_lines(folder / "runs" / "on_terminal") == log_lines(folder / "runs" / "to_file")  # ... not in the log


def test_no_progress_flag_hides_the_bars_on_a_terminal(setup: dict[str, object]) -> None:
    folder: Path = setup["folder"]
    status, shown = run_on_terminal(train_args(setup, "flag", "--no-progress"), folder, setup["env"])
    assert status == 0
    assert "%|" not in shown and "epoch 1/1" in shown
    assert shown.count("\r\n") == shown.count("\r")  # the terminal's own line ends only
