"""Predict's side of the per-dataset input transforms (:mod:`unet.transforms`, where each dataset's
transform and its inverse are defined once, shared with the preparation and the training
readers), plus the NIH orientation helpers predict needs to map results back to a volume's own
voxel axes and to place a region of interest.

The forward transforms return the slices the model sees *before* normalization, in its own
pixel grid; the sliding window then pads each slice with 0 and normalizes every window as
training normalized every crop (see :mod:`unet.input_transform` for the record that drives
them). The inverse transforms take probability maps in [0, 1] and resample them linearly, so a
mask is thresholded on the input's grid, never resampled as a mask. ``em_forward`` and its
siblings are the function forms of :class:`~unet.transforms.EMInput` and its siblings.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np

from unet.transforms import (
    EMInput,
    GMInput,
    NIHInput,
    resample_to,
    resize_image,
    resize_probability,
    scaled_shape,
)

# --------------------------------------------------------------------------- function forms


def em_forward(pixels: np.ndarray, resize_factor: Sequence[float] | None, scaling: str = "per-file",
               value_range: Sequence[float] | None = None) -> list[np.ndarray]:
    """EM images or stack ``pixels`` (N, H, W) -> N model slices float32 in [0, 1] (:class:`EMInput`)."""
    return EMInput(resize_factor, scaling, value_range)(pixels)


def em_inverse(probs: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Model-grid probabilities of N slices -> (N, H, W) float32 on the input grid (:class:`EMInput`)."""
    return EMInput().inverse(probs, shape)


def gm_forward(volume: np.ndarray, zooms: Sequence[float], resolution_mm: float) -> list[np.ndarray]:
    """GM volume (X, Y, Z) -> its Z axial slices resampled to ``resolution_mm`` (:class:`GMInput`)."""
    return GMInput(resolution_mm)(volume, zooms)


def gm_inverse(probs: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Model-grid probability slices -> (X, Y, Z) float32 on the input's in-plane grid (:class:`GMInput`)."""
    return np.clip(resample_to(np.stack(probs, axis=-1), shape), 0.0, 1.0)


def nih_forward(volume: np.ndarray, window_hu: Sequence[float], rows: slice | None = None,
                cols: slice | None = None, zs: Sequence[int] | None = None) -> list[np.ndarray]:
    """Canonical CT (X, Y, Z) in HU -> display slices as the NIH preparation made them (:class:`NIHInput`)."""
    return NIHInput(tuple(window_hu), rows, cols, zs)(volume)


def nih_inverse(probs: Sequence[np.ndarray], shape: Sequence[int], rows: slice | None = None,
                cols: slice | None = None, zs: Sequence[int] | None = None) -> np.ndarray:
    """Display-slice probabilities -> a canonical (X, Y, Z) float32 volume, 0 outside the ROI (:class:`NIHInput`)."""
    return NIHInput(rows=rows, cols=cols, zs=zs).inverse(probs, shape)


# --------------------------------------------------------------------------- NIH orientation


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


__all__ = ["canonical_box", "canonical_ornt", "display_roi", "em_forward", "em_inverse", "from_canonical",
           "gm_forward", "gm_inverse", "nih_forward", "nih_inverse", "resample_to", "resize_image",
           "resize_probability", "scaled_shape"]
