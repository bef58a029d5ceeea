"""The crop around the label and the slice pairs of the NIH preparation (the axial slice and the HU
window and scale are the input transform's, :mod:`unet.transforms`)."""

from __future__ import annotations

import numpy as np

from unet.transforms import DEFAULT_WINDOW, axial_slice, window_and_scale

__all__ = ["DEFAULT_SIZE", "DEFAULT_WINDOW", "axial_slice", "crop_box", "extract_window", "slice_pairs",
           "window_and_scale"]

#: Default crop (H, W) of the original NIH recipe.
DEFAULT_SIZE: tuple[int, int] = (112, 176)


def crop_box(label_slice: np.ndarray, size: tuple[int, int] = DEFAULT_SIZE) -> tuple[int, int]:
    """Top-left corner ``(y0, x0)`` of a ``size = (H, W)`` window centred on the label.

    Centre ``(cy, cx)`` = the median row and the median column of the foreground
    (non-zero) pixels, rounded down; for an empty label, the slice centre ``(n // 2)``.
    Along each axis (length ``n``, window ``s``): ``y0 = cy - s // 2`` (the centre pixel
    lands at index ``s // 2`` of the window), then clamped to ``[min(0, n - s), max(0, n - s)]``:
    when ``n >= s`` the window stays inside the slice; when ``n < s`` it is negative and the
    window covers the whole slice, the outside being padded by :func:`extract_window`.
    """
    h, w = label_slice.shape
    size_h, size_w = int(size[0]), int(size[1])
    rows, cols = np.nonzero(label_slice)
    if rows.size:
        cy, cx = int(np.floor(np.median(rows))), int(np.floor(np.median(cols)))
    else:
        cy, cx = h // 2, w // 2

    def place(center: int, n: int, s: int) -> int:
        return int(np.clip(center - s // 2, min(0, n - s), max(0, n - s)))

    return place(cy, h, size_h), place(cx, w, size_w)


def extract_window(
    array: np.ndarray, y0: int, x0: int, size: tuple[int, int] = DEFAULT_SIZE, fill: float = 0
) -> np.ndarray:
    """Cut rows ``[y0, y0 + H)`` and columns ``[x0, x0 + W)`` of a 2-D array; pad with ``fill``.

    Indices outside the array (negative ``y0``/``x0``, or past the end) read as ``fill``, so
    the result always has shape ``size = (H, W)`` and the input's dtype.
    """
    size_h, size_w = int(size[0]), int(size[1])
    out = np.full((size_h, size_w), fill, dtype=array.dtype)
    h, w = array.shape
    sy0, sy1 = max(y0, 0), min(y0 + size_h, h)
    sx0, sx1 = max(x0, 0), min(x0 + size_w, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def slice_pairs(
    ct: np.ndarray,
    label: np.ndarray,
    window: tuple[float, float] = DEFAULT_WINDOW,
    size: tuple[int, int] = DEFAULT_SIZE,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """All ``(z, image uint8 (H, W), mask bool (H, W))`` of canonical volumes, pancreas only.

    For every ``z`` whose label slice has a foreground voxel: display orientation
    (:func:`axial_slice`), :func:`window_and_scale` on the whole slice, then the
    :func:`crop_box` window of the label cut from both with :func:`extract_window` (pad 0).
    """
    pairs = []
    for z in np.flatnonzero(label.any(axis=(0, 1))):
        lab = axial_slice(label, int(z))
        img = window_and_scale(axial_slice(ct, int(z)), window)
        y0, x0 = crop_box(lab, size)
        pairs.append((int(z), extract_window(img, y0, x0, size, 0), extract_window(lab, y0, x0, size, False)))
    return pairs
