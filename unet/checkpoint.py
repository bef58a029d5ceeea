"""Checkpoints: written atomically, read with clear errors, checked against the model.

Checkpoints are read with ``torch.load(..., weights_only=True)``: tensors, numbers, strings,
lists and dicts only, so a crafted file cannot run code on load. Older checkpoints that hold
pickled Python objects are read only when the caller explicitly allows it.
"""

from __future__ import annotations

import math
import pickle
import pickletools
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError, short_repr
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
    validate_checkpoint(state, path)
    return state


# --------------------------------------------------------------------------- validation

#: Config keys a loader reads from a checkpoint's stored config: checked against the config
#: schema (type and range) when present, then against :data:`CONFIG_BOUNDS`.
CHECKED_CONFIG_KEYS = ("quantization", "activation_i_width", "activation_f_width", "weight_i_width",
                       "weight_f_width", "fixed_rounding", "fixed_overflow", "pow2_min_exponent", "activation",
                       "base_channels", "dropout", "threshold", "batch_size", "val_batch_size", "crop_size",
                       "normalize", "resolution_mm", "dataset")
#: Upper bounds on stored values that size allocations (a tampered ``base_channels: 10**9``
#: would otherwise ask for terabytes before anything fails).
CONFIG_BOUNDS = {"base_channels": 1024, "batch_size": 65536, "val_batch_size": 65536,
                 "activation_i_width": 64, "activation_f_width": 64, "weight_i_width": 64, "weight_f_width": 64}
#: The largest crop / sliding window side, in pixels.
MAX_WINDOW = 8192
#: Bounds of an EM record's ``resize_factor`` (prepared size / release size per axis).
RESIZE_FACTOR_RANGE = (1e-3, 64.0)
#: Names of model entries that must be floating-point tensors.
FLOAT_ENTRIES = ("weight", "bias", "running_mean", "running_var", "beta")


def validate_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Check a loaded checkpoint's structure and value ranges; DataError names the first problem.

    The one check every loader shares (:func:`load_checkpoint` runs it): ``model`` is a dict
    of named tensors, the weights and BatchNorm statistics are floating point and finite, and
    every running variance is >= 0 (NaN/Inf weights or a negative variance predict an all-zero
    mask without any other sign); the stored ``config`` values a loader reads have the
    schema's types and ranges and sane sizes (:data:`CONFIG_BOUNDS`, :data:`MAX_WINDOW`); the
    ``input_transform`` record, when present, is complete (``window``, ``normalize`` and the
    dataset's own fields) with finite values in range.
    """
    model = state["model"]
    if not isinstance(model, dict):
        raise DataError(f"checkpoint {path}: 'model' is a {type(model).__name__}, not a dict of weight tensors; "
                        "the file is not a checkpoint of this project or was altered")
    for name, value in model.items():
        _check_entry(name, value, path)
    config = state.get("config")
    if config is not None:
        if not isinstance(config, dict):
            raise DataError(f"checkpoint {path}: 'config' is a {type(config).__name__}, not a mapping of keys")
        _check_config(config, path)
    record = state.get("input_transform")
    if record is not None:
        _check_record(record, path)
    epoch = state.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise DataError(f"checkpoint {path}: 'epoch' must be an integer, got {short_repr(epoch)}")


def _check_entry(name: Any, value: Any, path: Path) -> None:
    """One ``model`` entry: a tensor, floating where it must be, finite, variances >= 0."""
    if not isinstance(name, str):
        raise DataError(f"checkpoint {path}: model entry {short_repr(name)} has no text name")
    label = short_repr(name, 120)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"checkpoint {path}: model entry {label} is a {type(value).__name__}, not a tensor; "
                        "the file was altered or is not a checkpoint of this project")
    leaf = name.rsplit(".", 1)[-1]
    if not value.is_floating_point():
        if leaf in FLOAT_ENTRIES or value.is_complex() or value.dtype == torch.bool:
            raise DataError(f"checkpoint {path}: model entry {label} has dtype {value.dtype}, not a floating-point "
                            "type")
        return
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(f"checkpoint {path}: model entry {label} holds {bad} NaN or infinite value(s) of "
                        f"{value.numel()}; the model would predict nonsense (training diverged, or the file was "
                        "altered): use an earlier checkpoint")
    if leaf == "running_var" and bool((value < 0).any()):
        raise DataError(f"checkpoint {path}: model entry {label} holds {int((value < 0).sum())} negative "
                        "variance(s); BatchNorm statistics cannot be negative (the file was altered)")


def _check_config(config: dict[str, Any], path: Path) -> None:
    """The stored config values a loader reads: schema type and range, then size bounds."""
    from .config import COMMON_KEYS, GM_KEYS, coerce_value

    schema = {key.name: key for key in (*COMMON_KEYS, *GM_KEYS)}
    for name in CHECKED_CONFIG_KEYS:
        if name not in config:
            continue
        try:
            value = coerce_value(schema[name], config[name], path.parent)
        except ValueError as exc:
            raise DataError(f"checkpoint {path}: its stored config key '{name}' {exc}") from None
        bound = CONFIG_BOUNDS.get(name)
        if bound is not None and value > bound:
            raise DataError(f"checkpoint {path}: its stored config key '{name}' is {value}, above the sane "
                            f"bound {bound}; the file was altered")
        if name == "crop_size" and max(value) > MAX_WINDOW:
            raise DataError(f"checkpoint {path}: its stored config key 'crop_size' {value} exceeds {MAX_WINDOW} "
                            "pixels per side; the file was altered")


def _check_record(record: Any, path: Path) -> None:
    """The input-transform record (:mod:`unet.input_transform`): complete and in range."""
    where = f"checkpoint {path}: its input_transform record"
    if not isinstance(record, dict):
        raise DataError(f"{where} is a {type(record).__name__}, not a mapping")
    missing = [key for key in ("dataset", "version", "window", "normalize") if key not in record]
    dataset = str(record.get("dataset", "")).upper()
    own = {"EM": ("resize_factor",), "GM": ("resolution_mm",), "NIH": ("window_hu",)}.get(dataset, ())
    missing += [key for key in own if key not in record]
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)}; the file was altered or is not a checkpoint of "
                        "this project")
    if dataset not in ("EM", "GM", "NIH"):
        raise DataError(f"{where} names an unknown dataset {short_repr(record['dataset'])}")
    version = record["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DataError(f"{where} has version {short_repr(version)}, not an integer >= 0")
    window = record["window"]
    if (not isinstance(window, list | tuple) or len(window) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WINDOW for v in window)):
        raise DataError(f"{where} has window {short_repr(window)}; expected [H, W], two integers in 1..{MAX_WINDOW}")
    if record["normalize"] not in ("none", "instance"):
        raise DataError(f"{where} has normalize {short_repr(record['normalize'])}; expected none or instance")
    if dataset == "EM" and record["resize_factor"] is not None:
        _check_numbers(record["resize_factor"], 2, RESIZE_FACTOR_RANGE, f"{where} has resize_factor")
    if dataset == "GM":
        _check_numbers([record["resolution_mm"]], 1, (1e-3, 100.0), f"{where} has resolution_mm")
    if dataset == "NIH" and record["window_hu"] is not None:
        _check_numbers(record["window_hu"], 2, (-1e5, 1e5), f"{where} has window_hu")
        if not record["window_hu"][0] < record["window_hu"][1]:
            raise DataError(f"{where} has window_hu {short_repr(record['window_hu'])}; expected [lo, hi] with lo < hi")


def _check_numbers(values: Any, count: int, bounds: tuple[float, float], what: str) -> None:
    """``values``: a list of ``count`` finite real numbers within ``bounds``; DataError naming ``what``."""
    ok = (isinstance(values, list | tuple) and len(values) == count
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                  and bounds[0] <= v <= bounds[1] for v in values))
    if not ok:
        raise DataError(f"{what} {short_repr(values)}; expected {count} finite number(s) in "
                        f"{bounds[0]:g}..{bounds[1]:g}")


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


# --- the BatchNorm statistics a checkpoint deploys -------------------------------------------

#: The ``batchnorm_statistics`` record of a checkpoint whose statistics are training's moving averages.
TRAINING_AVERAGES = "training moving averages"
#: The record's ``method`` when :func:`unet.batchnorm.recalibrate_batchnorm` made the statistics.
RECALIBRATED = "recalibrated"


def needs_deployment_warning(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint's BatchNorm statistics are training's moving averages while its run
    validated with batch statistics (``val_bn_mode: train``): the Dice its run logged was not
    measured with the statistics a deployed model uses."""
    record = checkpoint.get("batchnorm_statistics")
    method = record.get("method") if isinstance(record, dict) else None
    config = checkpoint.get("config")
    val_mode = config.get("val_bn_mode") if isinstance(config, dict) else None
    return method != RECALIBRATED and val_mode == "train"


def deployment_warning(path: Any, checkpoint: dict[str, Any]) -> str:
    """The warning for a checkpoint that :func:`needs_deployment_warning` flags, naming both Dice figures."""
    metrics = checkpoint.get("metrics") if isinstance(checkpoint.get("metrics"), dict) else {}
    logged = metrics.get("dice")
    logged_text = f" ({float(logged):.2f})" if isinstance(logged, (int, float)) else ""
    return (f"warning: {path} holds BatchNorm running statistics that were not recomputed for its weights, and "
            f"its run validated with batch statistics (val_bn_mode: train): the Dice the run logged{logged_text} "
            "is not what this model gives with its running statistics (eval mode, what predict, export and the "
            "integer engine use), which can be far lower. Retrain with bn_recalibration: true, or compare with "
            "--bn-mode train (the paper's protocol)")
