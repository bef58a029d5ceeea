"""Tiny experiments through the real commands: an experiment folder that links a real trainer,
small datasets in the real file formats, and the trainer run the way ``python em_unet.py ...``
runs it (in a subprocess, or in this process to save the start-up)."""

from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .commands import REPO, run_command

#: Small and fast trainer options for the EM data of :func:`prepare_synthetic_em`: 48 px crops,
#: 4 channels.
TINY = ["-o", "base_channels=4", "-o", "crop_size=[48,48]", "-o", "batch_size=4", "-o", "val_batch_size=4"]

#: Only a hung process gets this far: no assertion here measures speed (a loaded machine may be
#: slow by any factor; benchmarks/ hold the speed targets).
HANG_GUARD_S = 1800


def make_experiment(root: Path, dataset: str = "em", experiment: str = "a6.0_w0.4", name: str = "exp") -> Path:
    """``root/name``: an experiment folder holding a copy of the real ``<dataset>/<experiment>/config.yaml``
    and a link ``<dataset>_unet.py`` to the real trainer in ``<DATASET>_BASE/``."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(REPO / dataset / experiment / "config.yaml", folder / "config.yaml")
    trainer = f"{dataset}_unet.py"
    (folder / trainer).symlink_to(REPO / f"{dataset.upper()}_BASE" / trainer)
    return folder


def prepare_synthetic_em(out: Path) -> Path:
    """Prepare 6 train / 2 val synthetic EM slices of 48 px into ``out`` with the real preparation
    command (``preprocessing/em_prepare.py --synthetic``); returns ``out``."""
    result = run_command(["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "8", "--synthetic-size",
                          "128", "--resize", "64", "--crop", "48", "--out", str(out)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out


def pair_folder(root: Path, n_train: int = 6, n_val: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A PNG-pair dataset (the EM/NIH trainers' format) in ``root``: ``size`` px noisy images with an
    8 px bright square to segment, ``n_train`` training and ``n_val`` validation pairs."""
    from unet.prep.pngpairs import write_pair

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(4, size - 12, 2)
            mask[y : y + 8, x : x + 8] = True
            image = (mask * 120 + rng.normal(60, 20, (size, size))).clip(0, 255).astype(np.uint8)
            write_pair(root, split, f"s{i:02d}", image, mask)
    return root


def em_args(data: Path, *extra: str) -> list[str]:
    """Trainer options for a one-epoch run on a :func:`pair_folder` dataset at ``data`` (32 px
    crops, 2 channels, batches of 2), followed by ``extra``."""
    return ["-o", f"dataset_path={data}", "-o", "crop_size=[32,32]", "-o", "base_channels=2",
            "-o", "batch_size=2", "-o", "val_batch_size=2", "-o", "num_epochs=1", *extra]


def train(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """``python <trainer> -f config.yaml -t UNET *args`` in a subprocess from ``folder``."""
    trainer = next(folder.glob("*_unet.py")).name
    return run_command([trainer, "-f", "config.yaml", "-t", "UNET", *args], cwd=folder)


def trainer_in_process(monkeypatch: pytest.MonkeyPatch, folder: Path, args: list[str]) -> int:
    """``python <trainer> *args`` from ``folder``, in this process: the trainer's own RECIPE
    (imported from the script its link points to) through :func:`unet.cli.main`, with exactly the
    arguments given; returns the exit status. Stays in ``folder`` (undone with ``monkeypatch``)."""
    from unet import cli
    from unet.experiments import load_recipe

    trainer = next(folder.glob("*_unet.py"))
    recipe = load_recipe(trainer)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", [trainer.name])
    return cli.main(recipe, args)


def train_in_process(monkeypatch: pytest.MonkeyPatch, folder: Path, *args: str) -> int:
    """What ``python <trainer> -f config.yaml -t UNET *args`` does from ``folder``, in this
    process, on one torch thread (restored after); returns the exit status."""
    threads = torch.get_num_threads()
    # These tiny models gain nothing from a second thread; on a busy machine it only spins
    # waiting for the first (measured: 10x the CPU time of one thread).
    torch.set_num_threads(1)
    try:
        return trainer_in_process(monkeypatch, folder, ["-f", "config.yaml", "-t", "UNET", *args])
    finally:
        torch.set_num_threads(threads)


def run_printed(monkeypatch: pytest.MonkeyPatch, command: str) -> int:
    """Run a printed trainer command ``[cd DIR &&] PYTHON SCRIPT ARGS...`` in this process: change
    to DIR, import SCRIPT's recipe, call its entry point with ARGS; returns the exit status."""
    from unet import cli
    from unet.experiments import load_recipe

    words = shlex.split(command)
    if words[0] == "cd":
        assert words[2] == "&&", command
        monkeypatch.chdir(words[1])
        words = words[3:]
    python, script, *args = words
    assert Path(python).name.startswith("python"), command
    assert Path(script).is_file(), f"{script} does not exist from {Path.cwd()}"
    recipe = load_recipe(Path(script))
    monkeypatch.setattr(sys, "argv", [script])
    return cli.main(recipe, args)


def read_metrics(path: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv``, as strings."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Assert that a command failed the promised way: exit 2, one ``error:`` line on stderr
    (progress bars aside) holding every fragment, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip() and "%|" not in line]  # no bars
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
