"""A tiny EM experiment for the hint, inference and quiet-output tests: synthetic data written by
the real preparation command, an experiment folder linking the real trainer, and a way to run
the trainer's entry point in this process exactly as ``python em_unet.py ...`` would from there."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from unet import cli
from unet.experiments import load_recipe

from .conftest import REPO, run_command

#: Small and fast: 48 px crops, 4 channels.
TINY = ["-o", "base_channels=4", "-o", "crop_size=[48,48]", "-o", "batch_size=4", "-o", "val_batch_size=4"]


def prepare_em(out: Path) -> Path:
    """Prepare 6 train / 2 val synthetic EM slices of 48 px into ``out`` with the real command."""
    result = run_command(["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "8", "--synthetic-size",
                          "128", "--resize", "64", "--crop", "48", "--out", str(out)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out


def make_experiment(root: Path, name: str = "exp", source: str = "a6.0_w0.4") -> Path:
    """``root/name``: a copy of ``em/<source>/config.yaml`` and a link to the real EM trainer."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(REPO / "em" / source / "config.yaml", folder / "config.yaml")
    (folder / "em_unet.py").symlink_to(REPO / "EM_BASE" / "em_unet.py")
    return folder


def trainer_in_process(monkeypatch: pytest.MonkeyPatch, folder: Path, args: list[str]) -> int:
    """``python em_unet.py *args`` from ``folder``, in this process; returns the exit status."""
    recipe = load_recipe(folder / "em_unet.py")
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["em_unet.py"])
    return cli.main(recipe, args)


def run_printed(monkeypatch: pytest.MonkeyPatch, command: str) -> int:
    """Run a printed trainer command ``[cd DIR &&] PYTHON SCRIPT ARGS...`` in this process: change
    to DIR, import SCRIPT's recipe, call its entry point with ARGS."""
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
