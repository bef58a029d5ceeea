"""The training input transform per dataset, forward (input -> model slices) and inverse
(model-grid probabilities -> the input's own grid). Pure functions on numpy arrays.

Forward transforms return the slices the model sees *before* normalization, in its own
pixel grid; the sliding window then pads each slice with 0 and normalizes every window as
training normalized every crop (see :mod:`unet.input_transform` for the record that drives
them). Inverse transforms take probability maps in [0, 1] and resample them linearly, so a
mask is thresholded on the input's grid, never resampled as a mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from skimage import transform as sktf

from unet.data.gm import resample_inplane
from unet.prep.em import to_uint8
from unet.prep.nih import axial_slice, window_and_scale

# --------------------------------------------------------------------------- shared


def scaled_shape(shape: Sequence[int], factor: Sequence[float]) -> tuple[int, int]:
    """``(max(1, round(H fy)), max(1, round(W fx)))``: the model-grid size of an (H, W) image."""
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, factor, strict=True))  # type: ignore[return-value]


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) uint8 image to ``shape`` as the EM preparation resizes slices.

    Linear interpolation with anti-aliasing (a Gaussian pre-filter when shrinking), pixel
    edges aligned, then rounded and clipped to uint8: the image half of
    :func:`unet.prep.em.resize_pair` for any target shape. The same shape returns the input.
    """
    if image.shape == tuple(shape):
        return image
    out = sktf.resize(image.astype(np.float64), shape, order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Linear resampling of an (h, w) probability map to ``shape`` (pixel edges aligned, no
    pre-filter), clipped to [0, 1], float32. Output pixel ``i`` samples the input at
    ``(i + 0.5) h / H - 0.5``, edge values repeated outside. The same shape returns the input."""
    if prob.shape == tuple(shape):
        return prob.astype(np.float32, copy=False)
    out = sktf.resize(prob.astype(np.float32), shape, order=1, anti_aliasing=False, mode="edge",
                      preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- EM


def em_forward(pixels: np.ndarray, resize_factor: Sequence[float] | None, scaling: str = "per-file",
               value_range: Sequence[float] | None = None) -> list[np.ndarray]:
    """EM images or stack ``pixels`` (N, H, W) -> N model slices float32 in [0, 1].

    As the preparation: the grey levels are scaled to uint8 by :func:`unet.prep.em.to_uint8`
    (``scaling`` ``"range"``: from ``value_range`` whatever the file holds; ``"uint8"`` or
    ``"per-file"``: a non-uint8 file over its own min..max, the whole stack at once); each
    slice is resized by ``resize_factor`` ``[fy, fx]`` to :func:`scaled_shape`
    (:func:`resize_image`; ``None`` or ``[1, 1]``: unchanged); then ``uint8 / 255`` as the
    PNG-pair reader does.
    """
    stack = to_uint8(np.asarray(pixels), scaling, value_range)
    target = None if resize_factor is None else scaled_shape(stack.shape[1:], resize_factor)
    out = []
    for image in stack:
        if target is not None:
            image = resize_image(image, target)
        out.append(image.astype(np.float32) / np.float32(255.0))
    return out


def em_inverse(probs: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Model-grid probabilities of N slices -> (N, H, W) float32 on the input grid
    (:func:`resize_probability`)."""
    return np.stack([resize_probability(p, shape) for p in probs])


# --------------------------------------------------------------------------- GM


def gm_forward(volume: np.ndarray, zooms: Sequence[float], resolution_mm: float) -> list[np.ndarray]:
    """GM volume (X, Y, Z) with in-plane voxel sizes ``zooms`` (mm) -> its Z axial slices
    resampled to ``resolution_mm`` (:func:`unet.data.gm.resample_inplane`, bilinear), float32,
    raw intensities (normalization happens per window)."""
    resampled = resample_inplane(volume, tuple(zooms[:2]), resolution_mm, order=1)
    return [np.ascontiguousarray(resampled[:, :, z]) for z in range(resampled.shape[2])]


def resample_to(volume: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resample axes 0 and 1 of an (m0, m1, Z) array to ``shape`` = (n0, n1), pixel edges
    aligned, the convention of :func:`unet.data.gm.resample_inplane` (output pixel ``i``
    samples the input at ``(i + 0.5) m / n - 0.5``), edge values repeated, float32. Applied
    to a resampled slice with the original shape it is the inverse resampling."""
    (m0, m1), (n0, n1) = volume.shape[:2], shape
    if (m0, m1) == (n0, n1):
        return volume.astype(np.float32, copy=False)
    step = np.array([m0 / n0, m1 / n1, 1.0])
    offset = np.array([0.5 * step[0] - 0.5, 0.5 * step[1] - 0.5, 0.0])
    return ndimage.affine_transform(volume.astype(np.float32, copy=False), step, offset=offset,
                                    output_shape=(n0, n1, volume.shape[2]), order=order, mode="nearest")


def gm_inverse(probs: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Model-grid probability slices -> (X, Y, Z) float32 on the input's in-plane grid."""
    stacked = np.stack(probs, axis=-1)
    return np.clip(resample_to(stacked, shape), 0.0, 1.0)


# --------------------------------------------------------------------------- NIH


def canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation taking a volume's voxel axes to canonical RAS+
    (what ``nibabel.as_closest_canonical`` applies)."""
    return nib.orientations.io_orientation(affine)


def from_canonical(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Undo the canonical reorientation: an array in RAS+ voxel order -> the voxel order of
    the volume whose affine is ``affine`` (exact: axis permutation and flips only)."""
    identity = nib.orientations.axcodes2ornt(("R", "A", "S"))
    return nib.orientations.apply_orientation(volume, nib.orientations.ornt_transform(identity,
                                                                                      canonical_ornt(affine)))


def canonical_box(box: Sequence[tuple[int, int]], shape: Sequence[int], affine: np.ndarray) -> list[tuple[int, int]]:
    """A voxel box ``[(a0, b0), (a1, b1), (a2, b2)]`` (half-open, the volume's own axes, shape
    ``shape``) -> the same box on the canonical RAS+ axes. A flipped axis of length n maps
    ``[a, b)`` to ``[n - b, n - a)``."""
    ornt = canonical_ornt(affine)
    out: list[tuple[int, int]] = [(0, 0)] * 3
    for axis, (a, b) in enumerate(box):
        target, flip = int(ornt[axis, 0]), ornt[axis, 1]
        n = int(shape[axis])
        out[target] = (n - b, n - a) if flip < 0 else (a, b)
    return out


def display_roi(box: Sequence[tuple[int, int]], shape: Sequence[int]) -> tuple[slice, slice, range]:
    """A canonical box -> (rows, columns) of the display slice (:func:`unet.prep.nih.axial_slice`,
    ``display[r, c] = volume[X - 1 - c, Y - 1 - r, z]``) and the range of z."""
    (x0, x1), (y0, y1), (z0, z1) = box
    nx, ny = int(shape[0]), int(shape[1])
    return slice(ny - y1, ny - y0), slice(nx - x1, nx - x0), range(z0, z1)


def nih_forward(volume: np.ndarray, window_hu: Sequence[float], rows: slice | None = None,
                cols: slice | None = None, zs: Sequence[int] | None = None) -> list[np.ndarray]:
    """Canonical CT (X, Y, Z) in HU -> display slices as the NIH preparation made them.

    For each z in ``zs`` (default all): :func:`unet.prep.nih.axial_slice`, then
    :func:`unet.prep.nih.window_and_scale` over the *whole* slice (clip to the HU window,
    scale by the slice max to uint8), ``/ 255``; then the ``rows``/``cols`` region of
    interest is cut (default the whole slice). float32 (Y, X) or the ROI's shape.
    """
    rows = rows or slice(None)
    cols = cols or slice(None)
    zs = range(volume.shape[2]) if zs is None else zs
    window = (float(window_hu[0]), float(window_hu[1]))
    out = []
    for z in zs:
        scaled = window_and_scale(axial_slice(volume, int(z)), window)
        out.append(np.ascontiguousarray(scaled[rows, cols]).astype(np.float32) / np.float32(255.0))
    return out


def nih_inverse(probs: Sequence[np.ndarray], shape: Sequence[int], rows: slice | None = None,
                cols: slice | None = None, zs: Sequence[int] | None = None) -> np.ndarray:
    """Display-slice probabilities -> a canonical (X, Y, Z) float32 volume, 0 outside the ROI.

    ``volume[X - 1 - c, Y - 1 - r, z] = display[r, c]`` (the inverse of
    :func:`unet.prep.nih.axial_slice`), each slice placed at its ROI rows and columns.
    """
    nx, ny, nz = (int(s) for s in shape)
    rows = rows or slice(None)
    cols = cols or slice(None)
    zs = range(nz) if zs is None else zs
    out = np.zeros((nx, ny, nz), dtype=np.float32)
    display = np.zeros((ny, nx), dtype=np.float32)
    for z, prob in zip(zs, probs, strict=True):
        display[:] = 0.0
        display[rows, cols] = prob
        out[:, :, int(z)] = display.T[::-1, ::-1]
    return out


__all__ = ["canonical_box", "canonical_ornt", "display_roi", "em_forward", "em_inverse", "from_canonical",
           "gm_forward", "gm_inverse", "nih_forward", "nih_inverse", "resample_to", "resize_image",
           "resize_probability", "scaled_shape"]
