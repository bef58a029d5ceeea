"""Deterministic per-slice transforms shared by every reader (numpy in, numpy out)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError

#: Standard deviations below this are treated as a constant slice by :func:`normalize_instance`.
STD_FLOOR = 1e-8


def center_crop_or_pad(array: np.ndarray, size: tuple[int, int], fill: float = 0.0) -> np.ndarray:
    """Centre-crop the last two axes of ``array`` to ``size = (H, W)``, padding with ``fill``.

    Along each axis independently: when the input is larger, the window starts at
    ``(n - s) // 2``; when smaller, ``(s - n) // 2`` fill values go before it and the rest after.
    """
    out_h, out_w = int(size[0]), int(size[1])
    h, w = array.shape[-2:]
    out = np.full(array.shape[:-2] + (out_h, out_w), fill, dtype=array.dtype)
    src_y, dst_y, span_y = _window(h, out_h)
    src_x, dst_x, span_x = _window(w, out_w)
    out[..., dst_y : dst_y + span_y, dst_x : dst_x + span_x] = array[
        ..., src_y : src_y + span_y, src_x : src_x + span_x
    ]
    return out


def _window(n: int, s: int) -> tuple[int, int, int]:
    """Return (source start, destination start, length) of a centred crop/pad of n to s."""
    if n >= s:
        return (n - s) // 2, 0, s
    return 0, (s - n) // 2, n


def normalize_instance(image: np.ndarray) -> np.ndarray:
    """Per-image standardisation ``(x - mean(x)) / std(x)`` as float32.

    A constant image (std < ``STD_FLOOR``) maps to all zeros instead of dividing by zero.
    """
    image = image.astype(np.float32, copy=False)
    mean = float(image.mean())
    std = float(image.std())
    if std < STD_FLOOR:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - mean) / std).astype(np.float32)


def normalize(image: np.ndarray, mode: str) -> np.ndarray:
    """Apply the config's ``normalize`` mode: ``"instance"`` or ``"none"`` (unchanged, float32)."""
    if mode == "instance":
        return normalize_instance(image)
    if mode == "none":
        return image.astype(np.float32, copy=False)
    raise ValueError(f"unknown normalize mode {mode!r} (expected 'instance' or 'none')")


#: Value sets a binary mask may use (a subset of one of them: all-background slices are fine).
BINARY_MASK_VALUES = ({0, 1}, {0, 255})


def to_binary_mask(array: np.ndarray, name: str, hint: str) -> np.ndarray:
    """``array != 0`` as uint8 0/1, after checking the values are a subset of {0, 1} or {0, 255}.

    Anything else (grey levels, a mask of all 128) raises :class:`DataError`:
    ``"<name> is not binary: values {...}; <hint>"`` listing up to 8 values found.
    """
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    values = {int(v) for v in np.unique(array)}
    if not any(values <= allowed for allowed in BINARY_MASK_VALUES):
        shown = sorted(values)
        listed = ", ".join(str(v) for v in shown[:8]) + (", ..." if len(shown) > 8 else "")
        raise DataError(f"{name} is not binary: values {{{listed}}}; {hint}")
    return (array != 0).astype(np.uint8)
