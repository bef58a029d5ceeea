"""One input transform per dataset, with its inverse (the transform/inverse pairs of MONAI).

A transform object turns raw data as the public release has it into the slices the model sees
(``__call__``), and ``inverse`` takes the model's probability maps back to the input's own grid
(resampled linearly, so a mask is thresholded on the input's grid, never resampled as a mask):

* :class:`EMInput`: grey levels to uint8 (:func:`to_uint8`), each slice resized by the
  preparation's factor (:func:`resize_image`), ``uint8 / 255`` (:func:`from_uint8`);
* :class:`GMInput`: axial slices resampled in-plane to ``resolution_mm`` (:func:`resample_inplane`),
  raw intensities;
* :class:`NIHInput`: canonical CT, display-oriented axial slices (:func:`axial_slice`), the HU
  window scaled by each slice's max (:func:`window_and_scale`), ``/ 255``, an optional region.

The pixel rules they are made of are defined here once and shared: the preparation
(:mod:`unet.prep`), the training readers (:mod:`unet.data`) and predict (:mod:`unet.predict`)
import them from this module. Normalization (``normalize``) is not part of them: it is applied per
crop in training and per window in predict (:func:`unet.data.transforms.normalize`).
:func:`for_record` builds the transform a checkpoint's ``input_transform`` record describes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import transform as sktf

#: The NIH preparation's default HU window.
DEFAULT_WINDOW: tuple[float, float] = (0.0, 255.0)

# --------------------------------------------------------------------------- pixel rules


def scale_to_uint8(pixels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``rint(255 clip((v - lo) / (hi - lo), 0, 1))`` as uint8; all zeros when ``hi <= lo``."""
    if hi <= lo:
        return np.zeros(pixels.shape, dtype=np.uint8)
    v = pixels.astype(np.float64)
    return np.clip(np.rint((v - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def to_uint8(pixels: np.ndarray, scaling: str, value_range: Sequence[float] | None) -> np.ndarray:
    """The grey levels the model sees (uint8) under one of the recorded scalings
    (:data:`unet.prep.em.INTENSITY_SCALINGS`).

    ``range``: :func:`scale_to_uint8` with ``value_range`` whatever the input's type;
    ``uint8`` and ``per-file``: a uint8 input unchanged, any other scaled over its own
    min..max (the whole array: a stack is one file).
    """
    pixels = np.asarray(pixels)
    if scaling == "range":
        if value_range is None:
            raise ValueError("the range scaling needs a value range")
        return scale_to_uint8(pixels, float(value_range[0]), float(value_range[1]))
    if pixels.dtype == np.uint8:
        return pixels
    return scale_to_uint8(pixels, float(pixels.min()), float(pixels.max()))


def from_uint8(image: np.ndarray) -> np.ndarray:
    """``uint8 / 255`` as float32: the model's [0, 1] intensities of an 8-bit image."""
    return image.astype(np.float32) / np.float32(255.0)


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


def resampled_shape(
    shape: tuple[int, int], zooms: tuple[float, float], resolution_mm: float
) -> tuple[int, int]:
    """In-plane shape after resampling: ``max(1, round(n * zoom / resolution_mm))`` per axis.

    ``round`` is Python's (half to even); with float32 header zooms the product is rarely
    exactly a half.
    """
    m0, m1 = (max(1, int(round(n * z / resolution_mm))) for n, z in zip(shape, zooms, strict=True))
    return m0, m1


def resample_to(volume: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resample axes 0 and 1 of an (n0, n1, Z) array to ``shape`` = (m0, m1), pixel edges
    aligned: output pixel ``j`` samples the input at ``(j + 0.5) n / m - 0.5`` (voxel-centre
    coordinates), spline ``order`` (1 = bilinear), edge values repeated just outside, float32.
    Applied to a resampled slice with the original shape it is the inverse resampling."""
    (n0, n1), (m0, m1) = volume.shape[:2], shape
    if (n0, n1) == (m0, m1):
        return volume.astype(np.float32, copy=False)
    step = np.array([n0 / m0, n1 / m1, 1.0])
    offset = np.array([0.5 * step[0] - 0.5, 0.5 * step[1] - 0.5, 0.0])
    return ndimage.affine_transform(volume.astype(np.float32, copy=False), step, offset=offset,
                                    output_shape=(m0, m1, volume.shape[2]), order=order, mode="nearest")


def resample_inplane(
    volume: np.ndarray, zooms: tuple[float, float], resolution_mm: float, order: int = 1
) -> np.ndarray:
    """Resample axes 0 and 1 of a ``(X, Y, Z)`` volume to ``resolution_mm`` (axis 2 untouched).

    Output size per axis ``m = round(n * zoom / resolution_mm)`` (:func:`resampled_shape`).
    The output grid spans the same field of view as the input (:func:`resample_to`).
    Returns float32.
    """
    return resample_to(volume, resampled_shape(volume.shape[:2], zooms, resolution_mm), order)


def axial_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice ``z`` of a canonical RAS+ volume, oriented for display.

    ``display[r, c] = volume[X - 1 - c, Y - 1 - r, z]``: rows run anterior -> posterior and
    columns run from the patient's right to left (radiological convention, like a DICOM
    viewer). The result has shape ``(Y, X)``.
    """
    return np.ascontiguousarray(volume[::-1, ::-1, z].T)


def window_and_scale(slice_hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    """Map a slice in HU to uint8: clip to the window, then scale by the slice's own max.

    With ``window = (lo, hi)``: ``c = clip(x, lo, hi) - lo`` and
    ``out = rint(255 * c / max(c))`` (round half to even), so the brightest pixel of every
    slice becomes 255 and ``lo`` maps to 0. A slice whose ``max(c)`` is 0 (everything at or
    below ``lo``) stays all 0. NaN is treated as ``lo``. This is the original's conversion
    (clip to [0, 255], then scale each slice by its max) with the HU window made a parameter.
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must satisfy lo < hi, got {window}")
    clipped = np.clip(np.nan_to_num(np.asarray(slice_hu, dtype=np.float64), nan=lo), lo, hi) - lo
    peak = float(clipped.max()) if clipped.size else 0.0
    if peak <= 0.0:
        return np.zeros(clipped.shape, dtype=np.uint8)
    return np.rint(clipped * 255.0 / peak).astype(np.uint8)


# --------------------------------------------------------------------------- transform pairs


@dataclass(frozen=True)
class EMInput:
    """EM: images or a stack (N, H, W) -> N model slices float32 in [0, 1], and back.

    ``scaling``/``value_range``: how the grey levels become uint8 (:func:`to_uint8`);
    ``resize_factor`` ``[fy, fx]``: prepared / release size (``None`` or ``[1, 1]``: unchanged).
    """

    resize_factor: Sequence[float] | None = None
    scaling: str = "per-file"
    value_range: Sequence[float] | None = None

    def __call__(self, pixels: np.ndarray) -> list[np.ndarray]:
        """The model slices: uint8 grey levels, each resized (:func:`resize_image`), ``/ 255``."""
        stack = to_uint8(np.asarray(pixels), self.scaling, self.value_range)
        target = None if self.resize_factor is None else scaled_shape(stack.shape[1:], self.resize_factor)
        return [from_uint8(image if target is None else resize_image(image, target)) for image in stack]

    def inverse(self, probs: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Model-grid probabilities of N slices -> (N, H, W) float32 on the input's (H, W) grid."""
        return np.stack([resize_probability(p, shape) for p in probs])


@dataclass(frozen=True)
class GMInput:
    """GM: a volume (X, Y, Z) and its in-plane voxel sizes -> Z axial slices at ``resolution_mm``
    (bilinear, float32, raw intensities), and back."""

    resolution_mm: float

    def __call__(self, volume: np.ndarray, zooms: Sequence[float]) -> list[np.ndarray]:
        """The model slices: :func:`resample_inplane` of ``volume``, split along Z."""
        resampled = resample_inplane(volume, tuple(zooms[:2]), self.resolution_mm, order=1)
        return [np.ascontiguousarray(resampled[:, :, z]) for z in range(resampled.shape[2])]

    def inverse(self, probs: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
        """Model-grid probability slices -> (X, Y, Z) float32 on the input's in-plane ``shape``."""
        return np.clip(resample_to(np.stack(probs, axis=-1), shape), 0.0, 1.0)


@dataclass(frozen=True)
class NIHInput:
    """NIH: canonical CT (X, Y, Z) in HU -> display slices as the preparation made them, and back.

    ``rows``/``cols``: the display region of interest (default the whole slice); ``zs`` the
    slices (default all).
    """

    window_hu: Sequence[float] = DEFAULT_WINDOW
    rows: slice | None = None
    cols: slice | None = None
    zs: Sequence[int] | None = None

    def __call__(self, volume: np.ndarray) -> list[np.ndarray]:
        """For each z: :func:`axial_slice`, :func:`window_and_scale` over the *whole* slice,
        ``/ 255``, then the region cut; float32 (Y, X) or the region's shape."""
        rows, cols = self.rows or slice(None), self.cols or slice(None)
        zs = range(volume.shape[2]) if self.zs is None else self.zs
        window = (float(self.window_hu[0]), float(self.window_hu[1]))
        return [from_uint8(np.ascontiguousarray(window_and_scale(axial_slice(volume, int(z)), window)[rows, cols]))
                for z in zs]

    def inverse(self, probs: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
        """Display-slice probabilities -> a canonical (X, Y, Z) float32 volume of ``shape``, 0
        outside the region: ``volume[X - 1 - c, Y - 1 - r, z] = display[r, c]``."""
        nx, ny, nz = (int(s) for s in shape)
        rows, cols = self.rows or slice(None), self.cols or slice(None)
        zs = range(nz) if self.zs is None else self.zs
        out = np.zeros((nx, ny, nz), dtype=np.float32)
        display = np.zeros((ny, nx), dtype=np.float32)
        for z, prob in zip(zs, probs, strict=True):
            display[:] = 0.0
            display[rows, cols] = prob
            out[:, :, int(z)] = display.T[::-1, ::-1]
        return out


def for_record(record: Mapping[str, Any], **region: Any) -> EMInput | GMInput | NIHInput:
    """The transform an ``input_transform`` record describes (:mod:`unet.input_transform`); EM's
    ``scaling`` defaults to per-file, NIH takes its region (``rows``, ``cols``, ``zs``) as keywords.
    Raises ValueError for an unknown dataset or a record that lacks what the transform needs."""
    dataset = record.get("dataset")
    if dataset == "EM":
        return EMInput(record.get("resize_factor"), record.get("intensity_scaling") or "per-file",
                       record.get("intensity_range"))
    if dataset == "GM":
        return GMInput(float(record["resolution_mm"]))
    if dataset == "NIH":
        if record.get("window_hu") is None:
            raise ValueError("the record has no HU window")
        return NIHInput(tuple(record["window_hu"]), **region)
    raise ValueError(f"no input transform for dataset {dataset!r}")


__all__ = ["DEFAULT_WINDOW", "EMInput", "GMInput", "NIHInput", "axial_slice", "for_record", "from_uint8",
           "resample_inplane", "resample_to", "resampled_shape", "resize_image", "resize_probability",
           "scale_to_uint8", "scaled_shape", "to_uint8", "window_and_scale"]
