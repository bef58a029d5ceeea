"""Checkpoints: written atomically, read with clear errors, checked against the model.

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings,
lists and dicts only, so a crafted file cannot run code on load. Older checkpoints that hold
pickled Python objects are read only when the caller explicitly allows it.
"""

from __future__ import annotations

import pickle
import pickletools
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError
from .fileio import atomic_torch_save

FORMAT_VERSION = 1
#: The config key that allows reading a checkpoint that holds pickled Python objects.
UNSAFE_OPT_IN = "allow_unsafe_checkpoint"


class UnsafeCheckpointError(DataError):
    """The checkpoint holds Python objects whose unpickling could run code."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (plus ``format_version``) to ``path`` atomically.

    ``state`` must hold only what ``weights_only`` loading accepts (tensors, numbers, strings,
    None, lists, tuples and dicts of these), or :func:`load_checkpoint` will refuse it.
    """
    atomic_torch_save({"format_version": FORMAT_VERSION, **state}, path)


def load_checkpoint(path: Path, allow_unsafe: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` without running any of its code.

    Loads with ``weights_only=True``. A file that holds other Python objects (an old
    checkpoint with pickled RNG states, or a crafted one) raises
    :class:`UnsafeCheckpointError` naming the file and the ``allow_unsafe_checkpoint`` opt-in;
    with ``allow_unsafe`` it is instead loaded with ``weights_only=False`` after a warning on
    stderr naming the file. A missing, damaged or foreign file raises :class:`DataError`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; train a model first or set trained_model")
    try:
        with warnings.catch_warnings():  # torch warns about plain pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused something, or the bytes are no pickle
        objects = _unsafe_globals(path)
        if not objects:
            raise _damaged(path) from None
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"checkpoint {path} holds Python objects that could run code when loaded "
                f"({_first(objects, 3)}), so it was not loaded; if it is an older checkpoint of this project "
                f"from a source you trust, set {UNSAFE_OPT_IN}: true (or -o {UNSAFE_OPT_IN}=true)"
            ) from None
        print(f"warning: loading {path} with {UNSAFE_OPT_IN}: true; it holds Python objects "
              f"({_first(objects, 3)}) that run code while loading: use this only for files you trust",
              file=sys.stderr, flush=True)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - anything the file's own code raises
            raise _damaged(path) from None
    except Exception:  # torch raises many types for a damaged file
        raise _damaged(path) from None
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(f"checkpoint {path} is not a checkpoint of this project (no 'model' entry)")
    return state


def _damaged(path: Path) -> DataError:
    return DataError(f"checkpoint {path} cannot be read; it is damaged or not a checkpoint of this project")


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals (``module.name``) that unpickling ``path`` would import, found
    without unpickling it; empty when there are none or the file is not a pickle."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a torch.save zip archive: scan it as a plain pickle
        pass
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) or "a global")
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a pickle at all: damaged
        return []
    return names


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
