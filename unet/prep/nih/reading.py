"""Reading NIH CT volumes and labels: NIfTI files and DICOM series, in HU, reoriented to
canonical RAS+ (voxel axis 0 towards the patient's Right, 1 Anterior, 2 Superior)."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from unet.errors import DataError
from unet.nifti_check import check_nifti


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
        check_nifti(path, img)  # before any voxel is allocated
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

    Raises :class:`DataError` for a missing, unreadable or non-3-D input, and for NaN or
    infinite voxels.
    """
    path = Path(path)
    if path.is_dir():
        data, affine = load_dicom_series(path)
    elif path.is_file():
        data, affine = _load_nifti(path)
    else:
        raise DataError(f"{path} does not exist")
    volume = np.ascontiguousarray(data, dtype=np.float32)
    if not np.isfinite(volume).all():  # HU are finite; NaN/Inf would be segmented as nonsense without a word
        bad = int(volume.size - np.count_nonzero(np.isfinite(volume)))
        raise DataError(f"{path}: contains NaN or infinite values ({bad} of {volume.size} voxels); a CT volume in HU "
                        "holds finite numbers only")
    return volume, affine


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

    The series are found with SimpleITK's GDCM scanner in ``folder`` and every folder below
    it (``ImageSeriesReader.GetGDCMSeriesIDs`` / ``GetGDCMSeriesFileNames``); files that are
    not DICOM, and DICOM objects without pixel data or without ImagePositionPatient and
    ImageOrientationPatient, are ignored; a DICOM image SimpleITK cannot read is an error that
    names it (see :func:`_dicom_series`). The images must form one series and share
    ImageOrientationPatient, PixelSpacing, Rows and Columns; their pixels are read by
    ``sitk.ImageSeriesReader``.

    Geometry (DICOM patient coordinates are LPS+ millimetres): with row cosine ``u`` and
    column cosine ``v`` (ImageOrientationPatient), the slice normal is ``n = u x v`` and
    slices are sorted by ``ImagePositionPatient . n``. Pixel ``(row r, column c)`` of slice
    ``k`` lies at ``P_0 + c * dc * u + r * dr * v + k * s`` with ``(dr, dc)`` = PixelSpacing
    and ``s = (P_last - P_0) / (N - 1)`` (from SliceThickness along ``n`` for a single
    slice), so a tilted gantry keeps its shear. The voxel array is indexed ``[c, r, k]``; its
    LPS affine is converted to RAS+ by negating the first two rows, then the volume is
    reoriented to canonical RAS+. Values: ``HU = stored * RescaleSlope + RescaleIntercept``
    (per slice; defaults 1 and 0), computed by SimpleITK in double and stored as float32.

    Raises :class:`DataError` naming the folder or file when there are no images, several
    series (each listed with its folder), a file SimpleITK cannot read, inconsistent
    geometry, two slices at one position or slice gaps that differ by more than 10 %.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    for root, _dirs, names in os.walk(folder):  # the scanner opens every file: a FIFO would block it
        for name in names:
            entry = Path(root) / name
            if not entry.is_file():
                raise DataError(f"{entry} in the DICOM series folder {folder} is not a regular file (a named pipe, "
                                "socket, device or broken link); remove it from the folder")
    series = _dicom_series(folder)
    if not series:
        raise DataError(f"no DICOM images with position and orientation found under {folder}")
    if len(series) > 1:
        listed = "; ".join(
            f"{uid} ({len(images)} images in {os.path.relpath(images[0].file.parent, folder)})"
            for uid, images in sorted(series.items(), key=lambda item: item[1][0].file)
        )
        raise DataError(f"{folder} holds {len(series)} DICOM series ({listed}); keep only the CT series of the case")
    images = next(iter(series.values()))

    first = images[0]
    for image in images[1:]:
        same_iop = np.allclose(image.orientation, first.orientation, atol=1e-4)
        same_spacing = np.allclose(image.spacing, first.spacing, atol=1e-4)
        if not (same_iop and same_spacing and image.size == first.size):
            raise DataError(f"{image.file} has a different orientation, spacing or size than {first.file}")
    iop = np.asarray(first.orientation, dtype=np.float64)
    u, v = iop[:3], iop[3:]
    normal = np.cross(u, v)
    positions = np.asarray([image.position for image in images], dtype=np.float64)
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    files = [images[i].file for i in order]

    n = len(files)
    if n > 1:
        gaps = np.diff(positions @ normal)
        if np.any(gaps < 1e-3):
            raise DataError(f"{folder}: two DICOM images share one slice position")
        if np.max(np.abs(gaps - np.median(gaps))) > 0.1 * np.median(gaps):
            raise DataError(f"{folder}: slice gaps are not uniform ({gaps.min():.3g}-{gaps.max():.3g} mm)")
        step = (positions[-1] - positions[0]) / (n - 1)
    else:
        step = normal * first.thickness

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _itk_warnings_off(sitk):  # ITK warns about sampling it does not use here
            pixels = sitk.GetArrayFromImage(reader.Execute())  # [k, r, c]
    except RuntimeError as exc:
        raise DataError(_unreadable_file(sitk, files) or f"cannot read the DICOM series in {folder}: "
                        f"{_itk_message(exc)}") from exc

    lps = np.eye(4)
    lps[:3, 0] = u * first.spacing[1]
    lps[:3, 1] = v * first.spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    volume = pixels.transpose(2, 1, 0)  # [k, r, c] -> [c, r, k]
    img = nib.Nifti1Image(np.ascontiguousarray(volume), ras)
    return _canonical(img, folder)


@dataclass(frozen=True)
class _DicomImage:
    """The geometry of one DICOM image file, as its header states it."""

    file: Path
    position: tuple[float, ...]  # ImagePositionPatient (LPS mm)
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosine, column cosine
    spacing: tuple[float, ...]  # PixelSpacing: (row spacing, column spacing) mm
    size: tuple[int, int]  # (Columns, Rows)
    thickness: float  # SliceThickness (1.0 when absent or 0)


def _dicom_series(folder: Path) -> dict[str, list[_DicomImage]]:
    """SeriesInstanceUID -> its image files under ``folder`` (recursively, sorted by path),
    read by SimpleITK's GDCM scanner; series without an image with geometry are left out.

    A file the scanner skips although it is a DICOM file with pixel data (``DICM`` at byte 128
    and the PixelData tag (7FE0,0010) in its bytes) is a corrupt image, e.g. a download cut
    short: :class:`DataError` names it rather than a slice going missing. DICOM objects without
    pixel data (reports, presentation states, ``DICOMDIR``) are ignored.
    """
    import SimpleITK as sitk

    if not folder.is_dir():
        return {}
    found: dict[str, list[Path]] = {}
    every_file: list[Path] = []
    with _itk_warnings_off(sitk):  # GDCM warns about every folder without a series
        for directory, _, names in sorted(os.walk(folder)):
            if not names:
                continue
            every_file += [Path(directory) / name for name in sorted(names)]
            for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
                files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, uid)
                found.setdefault(uid, []).extend(Path(f) for f in files)
    in_series = {file for files in found.values() for file in files}
    for file in every_file:
        if file not in in_series and _is_dicom_with_pixels(file):
            _dicom_image(sitk, file)  # raises DataError naming the file when SimpleITK cannot read it
    series = {}
    for uid, files in found.items():
        images = [image for file in sorted(files) if (image := _dicom_image(sitk, file)) is not None]
        if images:
            series[uid] = images
    return series


def _is_dicom_with_pixels(file: Path) -> bool:
    """Whether ``file`` has the DICOM Part 10 signature (``DICM`` after the 128-byte preamble)
    and holds the PixelData tag (7FE0,0010), little or big endian."""
    try:
        with open(file, "rb") as handle:
            if handle.read(132)[128:] != b"DICM":
                return False
            data = handle.read()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _dicom_image(sitk, file: Path) -> _DicomImage | None:
    """The header geometry of ``file`` (None for a DICOM object without position or orientation)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        message = _itk_message(exc).replace(f' for "{file}"', "")
        raise DataError(f"cannot read DICOM file {file} (corrupt or truncated?): {message}") from exc
    keys = set(reader.GetMetaDataKeys())
    if not {"0020|0032", "0020|0037"} <= keys:
        return None

    def numbers(key: str) -> tuple[float, ...]:
        return tuple(float(v) for v in reader.GetMetaData(key).strip().split("\\"))

    try:
        position, orientation = numbers("0020|0032"), numbers("0020|0037")
        spacing = numbers("0028|0030") if "0028|0030" in keys else (1.0, 1.0)
        thickness = float(reader.GetMetaData("0018|0050").strip() or 0) if "0018|0050" in keys else 0.0
    except ValueError as exc:
        raise DataError(f"cannot read DICOM file {file}: {exc}") from exc
    if len(position) != 3 or len(orientation) != 6 or len(spacing) != 2:
        raise DataError(f"cannot read DICOM file {file}: malformed ImagePositionPatient, "
                        "ImageOrientationPatient or PixelSpacing")
    size = reader.GetSize()
    if len(size) > 2 and size[2] > 1:
        raise DataError(f"{file} is a multi-frame DICOM image ({size[2]} frames); export the series "
                        "as one file per slice")
    return _DicomImage(file, position, orientation, spacing, (int(size[0]), int(size[1])), thickness or 1.0)


def _unreadable_file(sitk, files: list[Path]) -> str | None:
    """``cannot read DICOM file <file>: ...`` for the first of ``files`` SimpleITK cannot read alone."""
    for file in files:
        try:
            sitk.ReadImage(str(file))
        except RuntimeError as exc:
            message = _itk_message(exc).replace(f' for "{file}"', "")
            return f"cannot read DICOM file {file} (corrupt or truncated?): {message}"
    return None


def _itk_message(exc: BaseException) -> str:
    """The description of a SimpleITK / ITK exception, without its source file and line."""
    text = str(exc).strip()
    if "ERROR:" in text:  # "sitk::ERROR: <text>" or "ITK ERROR: Class(0x...): <text>"
        text = text.rsplit("ERROR:", 1)[1].strip()
        if "):" in text.split(" ", 1)[0]:
            text = text.split("):", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


@contextlib.contextmanager
def _itk_warnings_off(sitk) -> Iterator[None]:
    """Silence ITK's warnings to stderr for the duration, then restore the global setting."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
