"""A synthetic NIH-like release (abdomen CT with a pancreas label) for tests and the quick start."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from unet.errors import ConfigError
from unet.fileio import SYNTHETIC_SOURCE, atomic_directory


def synthetic_case(shape: tuple[int, int, int] = (192, 192, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic abdomen CT in HU and its pancreas label, as canonical RAS+ arrays.

    Returns ``(ct int16 (X, Y, Z), label uint8 (X, Y, Z))``. Built per axial slice in
    display coordinates (rows anterior -> posterior, columns right -> left, see
    :func:`axial_slice`): air -1000 outside an elliptical body; subcutaneous fat -100; a
    muscle wall 50; visceral fat -80 inside; liver 60 (patient's right, upper slices);
    kidneys 140; aorta 150; vertebral body 400 with a 700 HU cortex and the spinal canal
    20 (posterior); the pancreas 40 HU, an elongated band bowed anteriorly from its head
    (right of the midline) to its tail (left), present only in the middle ~35 % of slices
    and thinning towards its ends. Gaussian noise, sigma 8 HU. The label is the pancreas
    mask. The anatomy is jittered by ``seed``.
    """
    nx, ny, nz = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    rows, cols = ny, nx
    # normalised display coordinates: x > 0 = patient's left, y > 0 = posterior
    yy, xx = np.meshgrid((np.arange(rows) + 0.5) / rows * 2 - 1, (np.arange(cols) + 0.5) / cols * 2 - 1, indexing="ij")
    jitter = rng.uniform(-0.04, 0.04, size=8)
    z_lo = rng.uniform(0.30, 0.38)
    z_hi = z_lo + rng.uniform(0.30, 0.38)
    ct = np.empty((rows, cols, nz), dtype=np.float32)
    lab = np.zeros((rows, cols, nz), dtype=bool)

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1.0

    for k in range(nz):
        t = (k + 0.5) / nz  # 0 = inferior, 1 = superior
        sl = np.full((rows, cols), -1000.0, dtype=np.float32)
        sl[ellipse(0, 0.02, 0.92, 0.78)] = -100.0
        sl[ellipse(0, 0.02, 0.84, 0.70)] = 50.0
        sl[ellipse(0, 0.02, 0.78, 0.64)] = -80.0
        if t > 0.45:
            sl[ellipse(-0.42 + jitter[0], -0.12 + jitter[1], 0.32, 0.40 * min(1.0, (t - 0.4) * 4))] = 60.0
        if 0.15 < t < 0.75:
            for side in (-1, 1):
                sl[ellipse(side * (0.45 + jitter[2]), 0.36, 0.11, 0.17)] = 140.0
        sl[ellipse(0.08, 0.28 + jitter[3], 0.06, 0.06)] = 150.0
        sl[ellipse(0, 0.52, 0.14, 0.12)] = 700.0
        sl[ellipse(0, 0.52, 0.11, 0.09)] = 400.0
        sl[ellipse(0, 0.69, 0.05, 0.04)] = 20.0
        if z_lo < t < z_hi:
            frac = (t - z_lo) / (z_hi - z_lo)
            half = 0.09 * np.sin(np.pi * frac) ** 0.5 + 0.01
            x0, x1 = -0.22 + jitter[4], 0.46 + jitter[5]
            xm, xr = (x0 + x1) / 2, (x1 - x0) / 2
            u = (xx - xm) / xr
            centre_y = 0.12 + jitter[6] - 0.16 * (1 - u**2) + 0.05 * (frac - 0.5)
            band = (np.abs(u) < 1) & (np.abs(yy - centre_y) < half * (1.2 - 0.4 * (u + 1) / 2))
            sl[band] = 40.0
            lab[:, :, k] = band
        ct[:, :, k] = sl
    ct += rng.normal(0.0, 8.0, size=ct.shape).astype(np.float32)
    # display [r, c, z] -> canonical [X - 1 - c, Y - 1 - r, z]
    ct_can = ct[::-1, ::-1, :].transpose(1, 0, 2)
    lab_can = lab[::-1, ::-1, :].transpose(1, 0, 2)
    return (
        np.ascontiguousarray(np.clip(np.rint(ct_can), -1024, 3071).astype(np.int16)),
        np.ascontiguousarray(lab_can.astype(np.uint8)),
    )


def write_synthetic_nih(
    out_dir: str | os.PathLike[str],
    n_cases: int = 6,
    shape: tuple[int, int, int] = (192, 192, 40),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic NIH-like release: ``out_dir/images/PANCREAS_0001.nii.gz``, ...
    and ``out_dir/labels/label0001.nii.gz``, ... (atomically; an earlier one only with ``overwrite``).

    Each case is :func:`synthetic_case` (``shape`` = canonical (X, Y, Z) voxels, seed
    ``seed + case``) at 0.7 x 0.7 x 2.5 mm, stored the way DICOM converters store CT: not
    in RAS+ voxel order but reoriented to LPS (odd cases) or LPI (even cases, slices from
    superior to inferior), with the matching affine, so readers must reorient. CT is int16
    HU, the label uint8 0/1. Returns ``out_dir``.
    """
    if n_cases < 1:
        raise ConfigError(f"n_cases must be >= 1, got {n_cases}")
    if len(shape) != 3 or min(int(s) for s in shape) < 1:
        raise ConfigError(f"shape must be three positive integers, got {tuple(shape)}")
    out_dir = Path(out_dir)
    spacing = (0.7, 0.7, 2.5)
    with atomic_directory(out_dir, SYNTHETIC_SOURCE, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for number in range(1, n_cases + 1):
            ct, lab = synthetic_case(shape, seed + number)
            canon_affine = np.diag([*spacing, 1.0])
            canon_affine[:3, 3] = [
                -spacing[i] * (shape[i] - 1) / 2 + (10.0 * number if i == 2 else 0.0) for i in range(3)
            ]
            codes = ("L", "P", "S") if number % 2 else ("L", "P", "I")
            transform = nib.orientations.ornt_transform(
                nib.orientations.axcodes2ornt(("R", "A", "S")), nib.orientations.axcodes2ornt(codes)
            )
            for array, folder, name in (
                (ct, "images", f"PANCREAS_{number:04d}.nii.gz"),
                (lab, "labels", f"label{number:04d}.nii.gz"),
            ):
                img = nib.Nifti1Image(array, canon_affine).as_reoriented(transform)
                img.set_data_dtype(array.dtype)
                nib.save(img, str(tmp / folder / name))
    return out_dir
