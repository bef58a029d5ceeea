"""Long runs survive faults and bad input is refused clearly (through the real command line)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unet.prep.pngpairs import write_pair

from ..conftest import REPO, run_command
from ..helpers.experiments import (
    HANG_GUARD_S,
    assert_one_line_error,
    em_args,
    make_experiment,
    pair_folder,
    read_metrics,
    train,
)

pytestmark = pytest.mark.slow


def metrics_without_time(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_metrics(path)]


# --- resume and interruption ---------------------------------------------------------------


def start(folder: Path, *args: str) -> subprocess.Popen:
    trainer = next(folder.glob("*_unet.py")).name
    return subprocess.Popen([sys.executable, trainer, "-f", "config.yaml", "-t", "UNET", *args], cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run: Path, process: subprocess.Popen, epochs: int) -> None:
    """Return once ``run``'s metrics.csv has ``epochs`` rows; fail if the process ends first."""
    deadline = time.monotonic() + HANG_GUARD_S
    while time.monotonic() < deadline:
        csv_file = run / "metrics.csv"
        if csv_file.exists() and len(read_metrics(csv_file)) >= epochs:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError(f"the run wrote fewer than {epochs} epochs in {HANG_GUARD_S} s: it hangs")


@pytest.mark.parametrize("experiment", ["a6.0_w0.4", "ternary"])
def test_killed_then_resumed_run_ends_like_an_uninterrupted_one(tmp_path: Path, experiment: str) -> None:
    data = pair_folder(tmp_path / "data", n_train=12, size=64)  # epochs long enough to kill one mid-way
    folder = make_experiment(tmp_path, "em", experiment)
    args = em_args(data, "-o", "num_epochs=4", "-o", "dropout=0.1", "-o", "crop_size=[64,64]")
    assert train(folder, *args, "-o", "experiment_name=straight").returncode == 0

    for attempt in range(5):  # a descheduled test may see the kill land only after the last epoch: try again
        name = f"killed{attempt}"
        process = start(folder, *args, "-o", f"experiment_name={name}")
        run = folder / "runs" / name
        wait_for_epochs(run, process, 1)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        done = torch.load(run / "last.pt", weights_only=True)["epoch"]
        if done < 4:
            break
    assert not (run / "summary.json").exists()
    assert 1 <= done < 4

    result = train(folder, *args, "-o", f"experiment_name={name}", "-o", "operation_mode=resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming after epoch {done} of 4" in result.stdout
    assert metrics_without_time(run / "metrics.csv") == metrics_without_time(folder / "runs" / "straight" /
                                                                            "metrics.csv")
    straight = torch.load(folder / "runs" / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(run / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_a_valid_last_checkpoint_and_says_how_to_resume(tmp_path: Path, signum: int) -> None:
    data = pair_folder(tmp_path / "data", n_train=12)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    process = start(folder, *em_args(data, "-o", "num_epochs=100000"))  # far longer than the test
    run = folder / "runs" / "exp"
    try:
        wait_for_epochs(run, process, 1)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted during epoch" in stdout and "-o operation_mode=resume" in stdout
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]
    assert not (run / "summary.json").exists()


def test_sigkill_at_any_moment_leaves_loadable_checkpoints(tmp_path: Path) -> None:
    """Kill at different moments of the epoch loop (training, validation, checkpoint writes)."""
    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    folder = make_experiment(tmp_path, "em", "full_precision")
    for attempt, delay in enumerate((0.0, 0.05, 0.11, 0.23)):
        name = f"kill{attempt}"
        process = start(folder, *em_args(data, "-o", "num_epochs=500", "-o", f"experiment_name={name}"))
        run = folder / "runs" / name
        wait_for_epochs(run, process, 1)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        for checkpoint in ("last.pt", "best.pt"):
            state = torch.load(run / checkpoint, weights_only=True)
            assert "model" in state and state["epoch"] >= 1
        assert read_metrics(run / "metrics.csv")


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data")
    folder = make_experiment(tmp_path, "em", "full_precision")
    result = train(folder, *em_args(data, "-o", "num_epochs=3", "-o", "lr=1e30", "-o", "loss=bce_dice"))
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "error: the " in result.stdout and "became" in result.stdout and " at epoch " in result.stdout
    assert ", batch " in result.stdout and "checkpoints of the last good epoch are kept" in result.stdout
    run = folder / "runs" / "exp"
    state = torch.load(run / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (run / "summary.json").exists()


# --- bad input -----------------------------------------------------------------------------


def test_config_without_the_top_key(tmp_path: Path) -> None:
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    result = train(folder, "-t", "MODEL")  # the later -t wins
    assert_one_line_error(result, "no top key 'MODEL'", "config.yaml")


def test_out_of_range_override(tmp_path: Path) -> None:
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    assert_one_line_error(train(folder, "-o", "weight_f_width=-2"), "-o: key 'weight_f_width' must be >= 0")
    assert not (folder / "runs").exists()


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_data_folder(tmp_path: Path, state: str) -> None:
    data = tmp_path / "data"
    if state == "empty":
        data.mkdir()
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    assert_one_line_error(train(folder, *em_args(data)), str(data), "preprocessing/em_prepare.py --synthetic")
    assert not (folder / "runs").exists()


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        (lambda d: (d / "train/masks/s01.png").unlink(), ("s01.png", "mask")),
        (lambda d: (d / "val/images/s00.png").unlink(), ("s00.png",)),
        (lambda d: write_pair(d, "train", "s01", np.zeros((40, 40), np.uint8), np.zeros((40, 40))) or
         (d / "train/masks/s01.png").write_bytes((d / "train/masks/s02.png").read_bytes()), ("s01", "(40, 40)")),
        (lambda d: write_pair(d, "train", "s03", np.zeros((32, 32), np.uint8), np.zeros((32, 32))) or
         _write_png(d / "train/masks/s03.png", np.full((32, 32), 128, np.uint8)), ("s03.png", "128")),
        (lambda d: corrupt(d / "train/images/s02.png"), ("s02.png",)),
        (lambda d: [p.unlink() for p in (d / "val/images").glob("*")] and
         [p.unlink() for p in (d / "val/masks").glob("*")], ("val",)),
    ],
    ids=["image-without-mask", "mask-without-image", "size-mismatch", "non-binary-mask", "corrupt-png", "empty-val"],
)
def test_bad_pairs_are_refused_naming_the_file(tmp_path: Path, damage, fragments: tuple[str, ...]) -> None:
    data = pair_folder(tmp_path / "data")
    damage(data)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    assert_one_line_error(train(folder, *em_args(data)), *fragments)
    assert not (folder / "runs").exists()


def _write_png(path: Path, array: np.ndarray) -> None:
    from skimage import io

    io.imsave(path, array, check_contrast=False)


def test_corrupt_tiff_is_refused(tmp_path: Path) -> None:
    from unet.prep.em import synthetic_em_stack, write_tiff_stack

    volume, labels = synthetic_em_stack(n_slices=4, size=64)
    write_tiff_stack(tmp_path / "v.tif", volume)
    write_tiff_stack(tmp_path / "l.tif", labels)
    corrupt(tmp_path / "v.tif")
    result = run_command(["preprocessing/em_prepare.py", "--volume", str(tmp_path / "v.tif"), "--labels",
                          str(tmp_path / "l.tif"), "--out", str(tmp_path / "out")], cwd=REPO)
    assert_one_line_error(result, "v.tif")
    assert not (tmp_path / "out").exists()


def gm_release(root: Path) -> Path:
    result = run_command(["preprocessing/gm_prepare.py", "--synthetic", "--size", "40", "--slices", "3", "--out",
                          str(root)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    return root


def gm_args(data: Path, *extra: str) -> list[str]:
    return ["-o", f"dataset_path={data}", "-o", "crop_size=[64,64]", "-o", "base_channels=2", "-o", "num_epochs=1",
            *extra]


def test_corrupt_nifti_is_refused(tmp_path: Path) -> None:
    data = gm_release(tmp_path / "gm")
    victim = data / "site1-sc03-image.nii.gz"
    victim.write_bytes(gzip.compress(b"not a nifti file at all" * 20))
    folder = make_experiment(tmp_path, "gm", "a6.0_w0.4")
    assert_one_line_error(train(folder, *gm_args(data)), "site1-sc03-image.nii.gz")


def test_gm_mask_shape_mismatch_and_empty_validation(tmp_path: Path) -> None:
    data = gm_release(tmp_path / "gm")
    mask = data / "site2-sc05-mask-r3.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((7, 7, 3), np.uint8), np.eye(4)), mask)
    folder = make_experiment(tmp_path, "gm", "a6.0_w0.4")
    assert_one_line_error(train(folder, *gm_args(data)), "site2-sc05-mask-r3.nii.gz")
    mask.unlink()
    result = train(folder, *gm_args(data, "-o", "val_subjects=[17]"))
    assert_one_line_error(result, "17")


def test_missing_or_incompatible_trained_model(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data")
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    missing = tmp_path / "nope.pt"
    assert_one_line_error(train(folder, *em_args(data, "-o", "operation_mode=inference", "-o",
                                                 f"trained_model={missing}")), str(missing))
    assert train(folder, *em_args(data, "-o", "num_epochs=1")).returncode == 0
    best = folder / "runs" / "exp" / "best.pt"
    result = train(folder, *em_args(data, "-o", "operation_mode=inference", "-o", "base_channels=4",
                                    "-o", f"trained_model={best}"))  # inference takes the model from best.pt
    assert_one_line_error(result, "'base_channels' is 4 (set by -o) but the checkpoint was trained with 2")
    result = train(folder, *em_args(data, "-o", "operation_mode=retrain", "-o", "base_channels=4",
                                    "-o", f"trained_model={best}", "-o", "experiment_name=wider"))
    assert_one_line_error(result, "does not fit this model", "enc1.0.0.weight")
    assert not (folder / "runs" / "wider").exists()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    result = train(folder, *em_args(data, "-o", "operation_mode=visualize", "-o", f"trained_model={garbage}"))
    assert_one_line_error(result, "garbage.pt", "cannot be read")
