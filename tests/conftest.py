"""Shared fixtures: the repository root, one torch thread, a small EM dataset and every mode's
small EM model trained through the real trainer. Plain builders live in :mod:`tests.helpers`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers.commands import REPO, run_command
from .helpers.experiments import make_experiment


@pytest.fixture(autouse=True)
def progress_switch_restored() -> Iterator[None]:
    """An in-process command run with ``--no-progress`` switches bars off in ``os.environ``
    (:func:`unet.progress.switch_off`, inherited by its subprocesses); undo it after each test so
    later tests' commands start with the user's default."""
    from unet.progress import ENV_VAR

    before = os.environ.get(ENV_VAR)
    yield
    if before is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = before

__all__ = ["REPO", "run_command"]


@pytest.fixture(scope="session")
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture(scope="session")
def small_em_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic EM slices of 32 px (slices 4 and 5 for validation), prepared in this process
    by :func:`unet.prep.em.prepare_em`."""
    from unet.prep.em import prepare_em, synthetic_em_stack

    volume, labels = synthetic_em_stack(n_slices=6, size=64, seed=0)
    root = tmp_path_factory.mktemp("em") / "em"
    prepare_em(volume, labels, root, val_slices=[4, 5], resize=32, crop=32)
    return root


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """torch on one thread for a test module, restored after: the tests' tensors are small, and two
    OpenMP threads on a shared 2-core machine can make a tiny forward pass 100x slower. Modules
    use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TrainedEM:
    """Small EM models of every mode of :data:`unet.exactness.MODES`, each trained once per test
    session through the real trainer (``EM_BASE/em_unet.py`` called in this process) on synthetic
    data written by the real preparation command: base_channels 4, 64 px crops, 2 epochs, 8
    training and 2 validation slices of 96x96. :meth:`model` loads a run's ``best.pt`` as
    ``unet.predict`` does (channels_last, eval mode)."""

    EPOCHS = 2

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        result = run_command(["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "10",
                              "--synthetic-size", "128", "--resize", "96", "--crop", "0", "--out", str(self.data)],
                             cwd=REPO)
        assert result.returncode == 0, result.stderr
        self._runs: dict[str, Path] = {}

    def run_dir(self, mode: str) -> Path:
        """The run folder of ``mode``, trained on first use."""
        if mode not in self._runs:
            from unet import cli
            from unet.exactness import MODES
            from unet.experiments import load_recipe

            folder = make_experiment(self.root / "runs", experiment="quickstart", name=mode)
            overrides = ["base_channels=4", f"num_epochs={self.EPOCHS}", f"dataset_path={self.data}",
                         "crop_size=[64,64]", "batch_size=4", "val_batch_size=2", "overlay_every=1000",
                         f"experiment_name={mode}", *MODES[mode][1]]
            args = ["-f", "config.yaml", "-t", "UNET"] + [w for item in overrides for w in ("-o", item)]
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(folder)
                patch.setattr(sys, "argv", ["em_unet.py"])
                assert cli.main(load_recipe(folder / "em_unet.py"), args) == 0, mode
            self._runs[mode] = folder / "runs" / mode
        return self._runs[mode]

    def model(self, mode: str):
        """A fresh copy of ``mode``'s ``best.pt`` model, loaded as ``unet.predict`` loads it."""
        from unet.predict.cli import load_predictor

        return load_predictor(self.run_dir(mode)).model.eval()

    def validation(self):
        """The two validation slices as the trainer reads them (uint8 / 255), (2, 1, 96, 96)."""
        import numpy as np
        import torch
        from PIL import Image

        paths = sorted((self.data / "val" / "images").glob("*.png"))
        return torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255.0)[None]
                            for p in paths])


@pytest.fixture(scope="session")
def trained_em(tmp_path_factory: pytest.TempPathFactory) -> TrainedEM:
    """Every mode's small EM model, trained through the real trainer once per session."""
    return TrainedEM(tmp_path_factory.mktemp("trained-em"))
