"""Classes 4 (rest), 5 and 6 of issue 23: where one ``error:`` line is promised, no traceback.
Output folders that cannot be written (checked before any work), damaged NIfTI geometry, bad
YAML and experiment names, garbage in a run folder, full disks, interruptions, odd input files
and non-finite CT voxels."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet.checkpoint import load_checkpoint
from unet.export.__main__ import main as export_main
from unet.lock import lock_path
from unet.predict.cli import main as predict_main
from unet.results.cli import main as results_main

from ..conftest import REPO
from ..helpers.experiments import em_args, make_experiment, pair_folder, trainer_in_process
from .helpers import digest, error_line, png, script_main, tiny_state, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: write_checkpoint(root / f"{name}.pt", tiny_state(name)) for name in ("EM", "GM", "NIH")}


@contextlib.contextmanager
def small_fs(folder: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (skips the test where mounting is not allowed)."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.decode().strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def experiment(tmp_path: Path) -> Path:
    return make_experiment(tmp_path)


# --- output folders that cannot be written: refused before any work ----------------------------

COMMANDS = ["predict", "export", "results", "training"]
PLACES = ["is_a_file", "under_a_file", "read_only_fs"]


def _run_with_output(command: str, target: Path, tmp_path: Path, models, monkeypatch) -> int:
    if command == "predict":
        png(tmp_path / "in" / "a.png")
        return predict_main(["-m", str(models["EM"]), "-i", str(tmp_path / "in"), "-o", str(target), "--prepared",
                             "--device", "cpu", "--no-progress"])
    if command == "export":
        return export_main([str(models["EM"]), "-o", str(target / "model.uqp")])
    folder = experiment(tmp_path)
    if command == "results":
        return results_main([str(folder.parent), "--out", str(target), "--no-overlays", "--no-weights"])
    return trainer_in_process(monkeypatch, folder, ["-f", "config.yaml", "-t", "UNET", "-o",
                                                    f"log_output_dir={target}", *em_args(tmp_path / "data")])


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_folder_that_cannot_be_written_is_one_line(models, tmp_path: Path, capsys, monkeypatch,
                                                             command: str, place: str) -> None:
    with contextlib.ExitStack() as stack:
        if place == "is_a_file":
            target = tmp_path / "out"
            target.write_text("a file of the user's\n")
        elif place == "under_a_file":
            (tmp_path / "notes.txt").write_text("a file of the user's\n")
            target = tmp_path / "notes.txt" / "out"
        else:
            target = stack.enter_context(small_fs(tmp_path / "ro", read_only=True))
        before = digest(tmp_path)
        status = _run_with_output(command, target, tmp_path, models, monkeypatch)
        words = ["Read-only file system" if place == "read_only_fs" else "a file"]
        error_line(status, capsys.readouterr().err, str(target if command != "export" or place != "under_a_file"
                                                          else tmp_path / "notes.txt"), *words)
        after = digest(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(("in/", "exp/"))} == \
        {k: v for k, v in before.items() if not k.startswith(("in/", "exp/"))}


# --- config values -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["non_utf8", "nul_name", "long_name"])
def test_bad_config_text_is_one_line(tmp_path: Path, capsys, monkeypatch, case: str) -> None:
    folder = experiment(tmp_path)
    config = folder / "config.yaml"
    if case == "non_utf8":
        config.write_bytes(b"UNET:\n  lr: 0.001  # caf\xe9 latin-1\n")
        words = [str(config), "not UTF-8", "0xe9"]
    elif case == "nul_name":
        config.write_text('UNET:\n  experiment_name: "run\\0one"\n')
        words = ["experiment_name", "NUL"]
    else:
        config.write_text(f"UNET:\n  experiment_name: {'x' * 300}\n")
        words = ["experiment_name", "255 bytes"]
    before = digest(tmp_path)
    status = trainer_in_process(monkeypatch, folder, ["-f", "config.yaml", "-t", "UNET"])
    line = error_line(status, capsys.readouterr().err, *words)
    assert len(line) < 600
    assert digest(tmp_path) == before


# --- results on a damaged run folder ---------------------------------------------------------------


def _run_folder(tmp_path: Path) -> Path:
    run = experiment(tmp_path) / "runs" / "exp"
    run.mkdir(parents=True)
    return run


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00binary", b"epoch,dice\n1,abc\n", b"just words\nno columns\n"])
def test_results_names_a_damaged_metrics_csv(tmp_path: Path, capsys, garbage: bytes) -> None:
    run = _run_folder(tmp_path)
    (run / "metrics.csv").write_bytes(garbage)
    before = digest(tmp_path)
    status = results_main([str(tmp_path), "--out", str(tmp_path / "report"), "--no-overlays", "--no-weights"])
    error_line(status, capsys.readouterr().err, str(run / "metrics.csv"))
    assert {k: v for k, v in digest(tmp_path).items() if not k.startswith("report")} == before


@pytest.mark.parametrize("garbage", [b"\xff\xfe binary", b"UNET: [unclosed\n", b"UNET:\n  lr: banana\n"])
def test_results_falls_back_to_the_experiment_config_for_a_damaged_run_config(tmp_path: Path, capsys,
                                                                             garbage: bytes) -> None:
    run = _run_folder(tmp_path)
    (run / "config.yaml").write_bytes(garbage)
    status = results_main([str(tmp_path), "--out", str(tmp_path / "report"), "--no-overlays", "--no-weights"])
    captured = capsys.readouterr()
    assert status == 0 and "Traceback" not in captured.err, captured.err
    assert (run / "config.yaml").read_bytes() == garbage


# --- NIfTI geometry and voxels ---------------------------------------------------------------------


def nifti(path: Path, data: np.ndarray, nan_affine: bool = False, nan_zoom: bool = False) -> Path:
    """A NIfTI written by nibabel, then its header damaged as asked (sform NaN, or pixdim NaN)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]))
    if nan_affine:
        img.header["srow_x"] = [np.nan, 0, 0, 0]
        img.header.set_sform(None, code=1)
    if nan_zoom:
        img.header["pixdim"][2] = np.nan
    img.header.set_data_offset(352)
    raw = img.header.binaryblock + b"\0" * 4 + np.asarray(data, img.header.get_data_dtype()).tobytes(order="F")
    import gzip

    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("damage", ["nan_affine", "nan_zoom"])
@pytest.mark.parametrize("dataset", ["GM", "NIH"])
def test_predict_refuses_nan_geometry(models, tmp_path: Path, capsys, dataset: str, damage: str) -> None:
    volume = nifti(tmp_path / "in" / "v.nii.gz", np.zeros((20, 20, 3), np.float32), **{damage: True})
    status = predict_main(["-m", str(models[dataset]), "-i", str(volume), "-o", str(tmp_path / "out"), "--device",
                           "cpu", "--no-progress"])
    error_line(status, capsys.readouterr().err, str(volume), "affine" if damage == "nan_affine" else "voxel size")
    assert not (tmp_path / "out" / "v.nii.gz").exists()


def test_nih_model_refuses_nan_voxels_like_gm(models, tmp_path: Path, capsys) -> None:
    data = np.full((20, 20, 3), -50.0, np.float32)
    data[3, 4, 1] = np.nan
    data[5, 5, 2] = np.inf
    for dataset in ("NIH", "GM"):
        volume = nifti(tmp_path / dataset / "v.nii.gz", data)
        status = predict_main(["-m", str(models[dataset]), "-i", str(volume), "-o", str(tmp_path / f"out{dataset}"),
                               "--device", "cpu", "--no-progress"])
        error_line(status, capsys.readouterr().err, str(volume), "NaN or infinite")


def test_nih_preparation_refuses_a_nan_affine(tmp_path: Path, capsys) -> None:
    image = nifti(tmp_path / "images" / "PANCREAS_0001.nii.gz", np.zeros((20, 20, 3), np.int16), nan_affine=True)
    nifti(tmp_path / "labels" / "label0001.nii.gz", np.zeros((20, 20, 3), np.uint8))
    status = script_main("preprocessing/nih_prepare.py")(["--images", str(tmp_path / "images"), "--labels",
                                                           str(tmp_path / "labels"), "--out", str(tmp_path / "out"),
                                                           "--no-progress"])
    captured = capsys.readouterr()
    assert status == 2 and "Traceback" not in captured.err, captured
    assert str(image) in captured.err and "affine" in captured.err
    assert not (tmp_path / "out").exists()


def test_gm_preparation_does_not_call_a_nan_voxel_size_usable(tmp_path: Path, capsys) -> None:
    from unet.prep.gm import write_synthetic_release

    release = write_synthetic_release(tmp_path / "gm", sites=[1], n_slices=3, size=40)
    victim = sorted(release.glob("site1-sc01-image.nii.gz"))[0]
    img = nib.load(str(victim))
    nifti(victim, np.asarray(img.dataobj), nan_zoom=True)
    status = script_main("preprocessing/gm_prepare.py")(["--release", str(release)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and status == 2, captured
    assert "usable: yes" not in captured.out.lower()
    error_line(status, captured.err, str(victim), "voxel size")


# --- odd input files (class 5) ---------------------------------------------------------------------


def test_a_fifo_is_skipped_by_name_and_never_opened(models, tmp_path: Path, capsys) -> None:
    png(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "in" / "pipe.png")
    started = time.monotonic()
    status = predict_main(["-m", str(models["EM"]), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                           "--prepared", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert time.monotonic() - started < 60 and "Traceback" not in err
    assert status == 1, err  # documented: 1 = some entries were skipped
    assert "pipe.png (a named pipe (FIFO))" in err
    assert (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "pipe.png").exists()


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_as_input_is_one_line(models, tmp_path: Path, capsys, device: str) -> None:
    status = predict_main(["-m", str(models["EM"]), "-i", device, "-o", str(tmp_path / "out"), "--prepared",
                           "--device", "cpu", "--no-progress"])
    error_line(status, capsys.readouterr().err, device, "character device")
    assert not (tmp_path / "out").exists()


# --- full disk (ENOSPC) while saving checkpoints ---------------------------------------------------


def test_full_disk_while_saving_a_checkpoint_keeps_the_previous_ones_and_says_how_to_resume(
        tmp_path: Path, capsys, monkeypatch) -> None:
    from unet.train import trainer

    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    folder = experiment(tmp_path)
    runs = small_fs(tmp_path / "runs", size="3m")
    with runs:
        real = trainer.write_csv

        def fill_after_epoch_1(path: Path, rows: list) -> None:
            real(path, rows)
            if len(rows) == 1:  # the disk fills up after the first epoch is logged
                with open(path.parent.parent / "filler", "wb") as handle, contextlib.suppress(OSError):
                    while True:
                        handle.write(b"\0" * 65536)
                        handle.flush()

        monkeypatch.setattr(trainer, "write_csv", fill_after_epoch_1)
        args = ["-f", "config.yaml", "-t", "UNET", "-o", f"log_output_dir={tmp_path / 'runs'}", "-o",
                "overlay_every=100", *em_args(data, "-o", "num_epochs=3")]
        status = trainer_in_process(monkeypatch, folder, args)
        line = error_line(status, capsys.readouterr().err, "No space left on device", "intact",
                          "operation_mode=resume")
        assert ".pt" in line
        run = tmp_path / "runs" / "exp"
        assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the previous checkpoint, whole
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        (tmp_path / "runs" / "filler").unlink()
        monkeypatch.setattr(trainer, "write_csv", real)
        assert trainer_in_process(monkeypatch, folder, [*args, "-o", "operation_mode=resume"]) == 0
        assert (run / "summary.json").is_file()


# --- interruptions -----------------------------------------------------------------------------------


def test_ctrl_c_during_trainer_start_up_is_one_line_and_130(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    folder = experiment(tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    lock = lock_path(folder / "runs" / "exp")
    for _attempt in range(5):  # a loaded machine can deschedule this test past the whole 1-epoch run: start again
        process = subprocess.Popen([sys.executable, "em_unet.py", "-f", "config.yaml", "-t", "UNET", "--no-progress",
                                    *em_args(data)], cwd=folder, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        while not lock.exists() and process.poll() is None:
            time.sleep(0.002)
        process.send_signal(signal.SIGINT)  # start-up: the run folder is being set up, no epoch yet
        _, err = process.communicate(timeout=120)
        if process.returncode != 0 or not (folder / "runs" / "exp" / "summary.json").is_file():
            break
        shutil.rmtree(folder / "runs")  # it finished before the signal: nothing was tested
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1].startswith("interrupted"), err
    assert not (folder / "runs" / "exp").exists()  # nothing half-made is kept
    assert not lock.exists()


def test_sigterm_while_the_trainer_imports_is_one_line(tmp_path: Path) -> None:
    folder = experiment(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "em_unet.py", "-f", "config.yaml", "-t", "UNET"], cwd=folder,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # torch is still loading
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, err)  # the shell shows 130
    assert err.strip().splitlines() == ["interrupted during start-up; nothing was written"]


def test_ctrl_c_in_export_is_one_line_and_writes_nothing(models, tmp_path: Path, capsys, monkeypatch) -> None:
    import unet.export.__main__ as export_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "write_packed", interrupted)
    status = export_main([str(models["EM"]), "-o", str(tmp_path / "model.uqp")])
    err = capsys.readouterr().err
    assert status == 130 and "Traceback" not in err and err.strip().startswith("interrupted"), err
    assert list(tmp_path.iterdir()) == []


# --- sweep (class 6) ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_reports_a_non_utf8_experiment_and_runs_the_others(tmp_path: Path) -> None:
    from .helpers import run_module

    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    root = tmp_path / "em"
    good = make_experiment(root, name="good")
    bad = make_experiment(root, name="bad")
    (bad / "config.yaml").write_bytes(b"UNET:\n  lr: 0.001  # caf\xe9\n")
    overrides = [a for pair in zip(em_args(data)[::2], em_args(data)[1::2], strict=True) for a in pair]
    result = run_module(["-m", "unet.sweep", str(root), "--no-progress", *overrides], cwd=tmp_path, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode != 0  # one experiment failed
    assert "not UTF-8" in result.stdout + result.stderr and str(bad / "config.yaml") in result.stdout + result.stderr
    assert (good / "runs" / "good" / "summary.json").is_file(), result.stdout + result.stderr


def test_results_reports_a_non_utf8_experiment_config_and_shows_the_others(tmp_path: Path, capsys) -> None:
    good = make_experiment(tmp_path / "em", name="good")
    bad = make_experiment(tmp_path / "em", name="bad")
    (bad / "config.yaml").write_bytes(b"UNET:\n  lr: 0.001  # caf\xe9\n")
    status = results_main([str(tmp_path / "em"), "--no-overlays", "--no-weights"])
    captured = capsys.readouterr()
    assert status == 0 and "Traceback" not in captured.err, captured.err
    table = (tmp_path / "em" / "results.md").read_text()
    assert "not UTF-8" in table and str(bad / "config.yaml") in table and good.name in table


def test_a_fifo_inside_a_dicom_series_folder_is_named_not_opened(models, tmp_path: Path, capsys) -> None:
    series = tmp_path / "in" / "case1"
    series.mkdir(parents=True)
    os.mkfifo(series / "IM0001.dcm")
    started = time.monotonic()
    status = predict_main(["-m", str(models["NIH"]), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                           "--device", "cpu", "--no-progress"])
    assert time.monotonic() - started < 60
    error_line(status, capsys.readouterr().err, str(series / "IM0001.dcm"), "not a regular file")
