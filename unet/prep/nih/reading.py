"""Reading NIH CT volumes and labels: NIfTI files and DICOM series, in HU, reoriented to
canonical RAS+ (voxel axis 0 towards the patient's Right, 1 Anterior, 2 Superior)."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from unet.errors import DataError


def _canonical(img: nib.spatialimages.SpatialImage, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Squeeze trailing singleton axes, check 3-D, reorient to RAS+; return (data, affine)."""
    img = nib.funcs.squeeze_image(img)
    if len(img.shape) != 3:
        raise DataError(f"{source} is not a 3-D volume (shape {img.shape})")
    canon = nib.as_closest_canonical(img)
    return np.asanyarray(canon.dataobj), np.asarray(canon.affine, dtype=np.float64)


def _load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        img = nib.load(str(path))
        return _canonical(img, path)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zlib.error, ImageFileError) as exc:
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc


def load_ct(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load a CT volume in HU as ``(array float32 (X, Y, Z), affine 4x4)`` in canonical RAS+.

    ``path`` is a NIfTI file (its scaling, ``scl_slope``/``scl_inter``, is applied) or a
    folder holding one DICOM series (searched recursively; see :func:`load_dicom_series`).
    The volume is reoriented with ``nibabel.as_closest_canonical``: voxel axis 0 increases
    towards the patient's Right, axis 1 towards Anterior, axis 2 towards Superior, and the
    returned affine maps those voxel indices to RAS+ millimetres.

    Raises :class:`DataError` for a missing, unreadable or non-3-D input.
    """
    path = Path(path)
    if path.is_dir():
        data, affine = load_dicom_series(path)
    elif path.is_file():
        data, affine = _load_nifti(path)
    else:
        raise DataError(f"{path} does not exist")
    return np.ascontiguousarray(data, dtype=np.float32), affine


def load_label(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Load a label NIfTI as ``(bool array (X, Y, Z), affine)`` reoriented like :func:`load_ct`.

    A voxel is foreground when its (scaled) value is > 0.5, so 0/1 and 0/255 labels and
    slightly interpolated float labels all work. Raises :class:`DataError` when unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    data, affine = _load_nifti(path)
    return np.ascontiguousarray(data > 0.5), affine


def load_dicom_series(folder: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read the DICOM series under ``folder`` as ``(array float32 (X, Y, Z) HU, affine)``.

    Every file below ``folder`` is tried; files that are not DICOM, or DICOM objects without
    image geometry or pixels, are ignored. All images must belong to one series and share
    ImageOrientationPatient, PixelSpacing, Rows and Columns.

    Geometry (DICOM patient coordinates are LPS+ millimetres): with row cosine ``u`` and
    column cosine ``v`` (ImageOrientationPatient), the slice normal is ``n = u x v`` and
    slices are sorted by ``ImagePositionPatient . n``. Pixel ``(row r, column c)`` of slice
    ``k`` lies at ``P_0 + c * dc * u + r * dr * v + k * s`` with ``(dr, dc)`` = PixelSpacing
    and ``s = (P_last - P_0) / (N - 1)`` (from SliceThickness along ``n`` for a single
    slice). The voxel array is indexed ``[c, r, k]``; its LPS affine is converted to RAS+ by
    negating the first two rows, then the volume is reoriented to canonical RAS+.
    Values: ``HU = stored * RescaleSlope + RescaleIntercept`` (per slice; defaults 1 and 0).

    Raises :class:`DataError` when there are no images, several series, inconsistent
    geometry, two slices at one position or slice gaps that differ by more than 10 %.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    slices = []
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(file))
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
            continue
        if all(k in ds for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelData")):
            slices.append((file, ds))
    if not slices:
        raise DataError(f"no DICOM images with position and orientation found under {folder}")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise DataError(f"{folder} holds {len(series)} DICOM series; keep only the CT series of the case")

    try:
        first = slices[0][1]
        iop = np.asarray([float(v) for v in first.ImageOrientationPatient], dtype=np.float64)
        spacing = np.asarray([float(v) for v in first.PixelSpacing], dtype=np.float64)
        rows, cols = int(first.Rows), int(first.Columns)
        for file, ds in slices:
            same_iop = np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4)
            same_spacing = np.allclose([float(v) for v in ds.PixelSpacing], spacing, atol=1e-4)
            if not (same_iop and same_spacing and (int(ds.Rows), int(ds.Columns)) == (rows, cols)):
                raise DataError(f"{file} has a different orientation, spacing or size than {slices[0][0]}")
        u, v = iop[:3], iop[3:]
        normal = np.cross(u, v)
        positions = np.asarray([[float(x) for x in ds.ImagePositionPatient] for _, ds in slices], dtype=np.float64)
        order = np.argsort(positions @ normal, kind="stable")
        positions = positions[order]
        datasets = [slices[i][1] for i in order]
        pixels = []
        for ds in datasets:
            slope = float(ds.get("RescaleSlope", 1.0))
            intercept = float(ds.get("RescaleIntercept", 0.0))
            pixels.append(ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept))
        thickness = float(first.get("SliceThickness", 1.0) or 1.0)
    except DataError:
        raise
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise DataError(f"cannot read the DICOM series in {folder}: {type(exc).__name__}: {exc}") from exc

    n = len(datasets)
    if n > 1:
        gaps = np.diff(positions @ normal)
        if np.any(gaps < 1e-3):
            raise DataError(f"{folder}: two DICOM images share one slice position")
        if np.max(np.abs(gaps - np.median(gaps))) > 0.1 * np.median(gaps):
            raise DataError(f"{folder}: slice gaps are not uniform ({gaps.min():.3g}-{gaps.max():.3g} mm)")
        step = (positions[-1] - positions[0]) / (n - 1)
    else:
        step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = u * spacing[1]
    lps[:3, 1] = v * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    volume = np.stack(pixels, axis=-1).transpose(1, 0, 2)  # [r, c, k] -> [c, r, k]
    img = nib.Nifti1Image(np.ascontiguousarray(volume), ras)
    return _canonical(img, folder)
