"""Builders shared by the hostile-input tests (issue 23): tiny real checkpoints, inputs in the real
formats, and checks that a command failed the promised way (exit 2, one ``error:`` line, no
traceback) and left the user's files byte-identical."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from unet.checkpoint import save_checkpoint
from unet.config import load_config
from unet.input_transform import input_transform_record

from ..conftest import REPO

#: Smallest model the trainers build: 4 channels, 16 px window.
TINY = ["base_channels=4", "crop_size=[16,16]", "val_batch_size=2", "batch_size=2"]


def tiny_state(dataset: str = "EM") -> dict[str, Any]:
    """A checkpoint state exactly as the trainer writes its best.pt (untrained weights)."""
    from unet.config import GM_KEYS
    from unet.model import build_model

    base = REPO / f"{dataset}_BASE" / "config.yaml"
    cfg = load_config(base, base, overrides=TINY, extra_keys=GM_KEYS if dataset == "GM" else ())
    torch.manual_seed(0)
    model = build_model(cfg)
    record = input_transform_record(cfg, dataset)
    if dataset == "EM":
        record["resize_factor"] = [1.0, 1.0]
    if dataset == "NIH":
        record["window_hu"] = [-100.0, 240.0]
    return {"model": model.state_dict(), "epoch": 1, "beta": model.beta(), "config": cfg.to_plain(),
            "dataset": dataset, "run_id": "0" * 32, "input_transform": record,
            "batchnorm_statistics": {"method": "recalibrated", "samples": 2, "batches": 1, "batch_size": 2,
                                     "augmented": False, "seconds": 0.0, "epoch": 1}}


def write_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """``state`` saved the way the trainer saves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, state)
    return path


def png(path: Path, size: int = 20, seed: int = 0) -> Path:
    """A grey 8-bit PNG of ``size`` x ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative name -> sha256); symbolic links and FIFOs by kind."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not path.is_dir():
            out[rel] = "special"
    return out


def error_line(status: int, stderr: str, *fragments: str) -> str:
    """Assert exit 2, exactly one ``error:`` line holding every fragment, no traceback; return it."""
    assert "Traceback" not in stderr, stderr
    assert status == 2, (status, stderr)
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert len(lines[0]) < 2000, lines[0][:300]
    return lines[0]


def run_module(args: list[str], cwd: Path, timeout: float = 120, env: dict[str, str] | None = None,
               preexec=None) -> subprocess.CompletedProcess:
    """``python *args`` in ``cwd`` with the worktree importable and one thread."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full, preexec_fn=preexec)


def script_main(relative: str):
    """The ``main`` of a command-line script of the repository (e.g. ``preprocessing/em_prepare.py``),
    imported from its file, to run it in this process as ``python SCRIPT ...`` would."""
    import importlib.util

    path = REPO / relative
    spec = importlib.util.spec_from_file_location(f"_hostile_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
