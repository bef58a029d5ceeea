"""Checkpoints: written atomically, read with clear errors, checked against the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError
from .fileio import atomic_torch_save

FORMAT_VERSION = 1


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus ``format_version``) to ``path`` atomically."""
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; DataError when missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; train a model first or set trained_model")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}); it is damaged or "
                        "not a checkpoint of this project") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"checkpoint {path} is not a checkpoint of this project (no 'model' entry)")
    return state


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state_dict`` into ``model`` strictly; DataError names every mismatching layer."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"shape differs (checkpoint vs model): {_first(shapes)}")
        if missing:
            parts.append(f"missing in checkpoint: {_first(missing)}")
        if unexpected:
            parts.append(f"not in model: {_first(unexpected)}")
        raise DataError(
            f"checkpoint {path} does not fit this model ({'; '.join(parts)}); check base_channels, "
            "activation and dropout against the config it was trained with"
        )
    model.load_state_dict(state_dict)


def _first(items: list[str], n: int = 4) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more
