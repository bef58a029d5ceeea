"""NIH Pancreas-CT preparation: CT volumes + pancreas labels -> PNG pairs (SPEC section 7).

Input (the TCIA release, or anything laid out the same way):

* an images folder holding one CT per case, either a NIfTI file (``PANCREAS_0001.nii.gz``,
  ``0001.nii.gz``, ``.nii`` also accepted) or a DICOM series folder whose name contains the
  case number (``PANCREAS_0001/``, nested subfolders allowed as in the TCIA download);
* a labels folder holding ``label0001.nii.gz`` (pancreas = non-zero).

Cases are matched by case number (the last run of digits in the name, as an int).

Processing, per case:

1. CT (HU) and label are reoriented to canonical RAS+ voxel axes (``nibabel``'s
   ``as_closest_canonical``): axis 0 runs towards the patient's Right, axis 1 towards
   Anterior, axis 2 towards Superior. CT and label are reoriented the same way, so equal
   indices are the same voxel.
2. Every axial slice ``z`` (canonical axis 2) whose label contains pancreas is turned into a
   display image (radiological convention, as a DICOM viewer shows a standard axial CT):
   rows run anterior -> posterior, columns run from the patient's right -> left
   (``display[r, c] = volume[X - 1 - c, Y - 1 - r, z]``), see :func:`axial_slice`.
3. Intensities: :func:`window_and_scale` (clip to the HU window, scale by the slice's max).
4. A ``size = (H, W)`` window (112 x 176 by default) centred on the median foreground pixel
   of the label is cut from image and label (:func:`crop_box`, :func:`extract_window`).
5. The pair is written as ``case0001_z045`` (``z`` = canonical slice index) in the PNG-pair
   format of :mod:`unet.prep.pngpairs`.

Finally the cases (``split="patient"``, default) or the slices (``split="slice"``, the
original's slice-level hold-out) are split into train and val, deterministically from the
seed. Cases that cannot be used (no label, unreadable file, shape mismatch, empty label)
are skipped and listed in the :class:`Report` and the manifest.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from tqdm import tqdm

from unet.errors import ConfigError, DataError
from unet.fileio import SYNTHETIC_SOURCE, atomic_directory
from unet.prep.pngpairs import write_manifest, write_pair

#: Default HU window of the original (its image conversions clipped to 0..255).
DEFAULT_WINDOW: tuple[float, float] = (0.0, 255.0)
#: Default crop (H, W) of the original NIH recipe.
DEFAULT_SIZE: tuple[int, int] = (112, 176)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DIGITS = re.compile(r"(\d+)(?!.*\d)")
_LABEL_NAME = re.compile(r"^label(\d+)\.nii(\.gz)?$", re.IGNORECASE)
#: Canonical affines of CT and label that differ by more than this (mm) raise a warning.
_AFFINE_TOL_MM = 0.5
#: Mean CT value under the label outside this range (HU) raises a misalignment warning.
_PANCREAS_HU_RANGE = (-150.0, 300.0)


# --------------------------------------------------------------------------------------------
# Case discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One CT volume found in the images folder, with its label file when one exists.

    ``kind`` is ``"nifti"`` (``image`` is a file) or ``"dicom"`` (``image`` is a folder).
    """

    number: int
    image: Path
    kind: str
    label: Path | None

    @property
    def name(self) -> str:
        """The name shown in reports: the image file or folder name."""
        return self.image.name

    @property
    def tag(self) -> str:
        """The case's prefix in output file names, e.g. ``case0001``."""
        return f"case{self.number:04d}"


def case_number(name: str) -> int | None:
    """Return the case number in a file or folder name: its last run of digits, as an int.

    NIfTI suffixes are removed first. ``"PANCREAS_0001.nii.gz"`` -> 1, ``"0012.nii"`` -> 12,
    ``"label0003.nii.gz"`` -> 3; a name without digits gives None.
    """
    for suffix in _NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    match = _DIGITS.search(name)
    return int(match.group(1)) if match else None


def find_cases(
    images_dir: str | os.PathLike[str], labels_dir: str | os.PathLike[str]
) -> tuple[list[Case], list[tuple[str, str]], list[str]]:
    """Discover CT volumes and their labels.

    Returns ``(cases, rejected, notes)``: the cases sorted by number; ``rejected`` lists
    ``(name, reason)`` for image entries that cannot be a case (two sources with the same
    number); ``notes`` mentions label files that have no CT. Hidden entries and files that
    are neither NIfTI nor folders are ignored, and so are label files (``label0001.nii.gz``)
    lying among the CTs.

    Raises :class:`DataError` when a folder is missing or no CT volume is found.
    """
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for what, folder in (("images", images_dir), ("labels", labels_dir)):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist or is not a folder")

    found: dict[int, list[tuple[Path, str]]] = {}
    for entry in sorted(images_dir.iterdir()):
        if entry.name.startswith(".") or _LABEL_NAME.match(entry.name):
            continue  # a label file beside the CTs is not a CT
        if entry.is_dir():
            kind = "dicom"
        elif entry.name.lower().endswith(_NIFTI_SUFFIXES):
            kind = "nifti"
        else:
            continue
        number = case_number(entry.name)
        if number is not None:
            found.setdefault(number, []).append((entry, kind))
    if not found:
        raise DataError(
            f"no CT volumes found in {images_dir} (expected PANCREAS_0001.nii.gz, 0001.nii.gz "
            "or one DICOM folder per case such as PANCREAS_0001/)"
        )

    labels: dict[int, Path] = {}
    for entry in sorted(labels_dir.iterdir()):
        match = _LABEL_NAME.match(entry.name)
        if match and entry.is_file():
            labels[int(match.group(1))] = entry

    cases: list[Case] = []
    rejected: list[tuple[str, str]] = []
    for number in sorted(found):
        sources = found[number]
        if len(sources) > 1:
            names = ", ".join(path.name for path, _ in sources)
            rejected.append((names, f"case {number} has several CT sources ({names})"))
            continue
        path, kind = sources[0]
        cases.append(Case(number, path, kind, labels.get(number)))
    notes = [f"label {labels[n].name} has no CT volume in {images_dir}" for n in sorted(set(labels) - set(found))]
    return cases, rejected, notes


# --------------------------------------------------------------------------------------------
# Volume loading
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Slice processing
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`prepare_nih` did.

    ``cases``: case numbers per split; ``slices``: slice count per split; ``skipped``:
    ``(name, reason)`` per unusable case; ``warnings``: notes on used cases (e.g. CT and
    label geometry disagree) and stray label files.
    """

    out_dir: Path
    split: str
    cases: dict[str, list[int]] = field(default_factory=dict)
    slices: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def used(self) -> list[int]:
        """Sorted numbers of the cases that contributed slices."""
        return sorted({n for numbers in self.cases.values() for n in numbers})

    def summary(self) -> str:
        """A few lines: cases used/skipped, then cases and slices per split."""
        total = len(self.used) + len(self.skipped)
        lines = [
            f"NIH Pancreas-CT: {len(self.used)} of {total} cases used, "
            f"{len(self.skipped)} skipped (split by {self.split})"
        ]
        for split in ("train", "val"):
            lines.append(f"  {split}: {len(self.cases.get(split, []))} cases, {self.slices.get(split, 0)} slices")
        return "\n".join(lines)


def _check_options(
    split: str,
    val_fraction: float,
    val_cases: Sequence[int] | None,
    window: tuple[float, float],
    size: tuple[int, int],
) -> None:
    if split not in ("patient", "slice"):
        raise ConfigError(f"split must be 'patient' or 'slice', got {split!r}")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if val_cases is not None and split != "patient":
        raise ConfigError("val_cases chooses whole patients; it needs split='patient'")
    if val_cases is not None and len(val_cases) == 0:
        raise ConfigError("val_cases is empty")
    if len(window) != 2 or not float(window[1]) > float(window[0]):
        raise ConfigError(f"the HU window must be (lo, hi) with lo < hi, got {tuple(window)}")
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ConfigError(f"size must be two positive integers (H, W), got {tuple(size)}")


def _n_val(n: int, fraction: float, what: str) -> int:
    if n < 2:
        raise DataError(f"only {n} usable {what}; a train/val split needs at least 2")
    return min(n - 1, max(1, round(fraction * n)))


def _process_case(
    case: Case, window: tuple[float, float], size: tuple[int, int]
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], list[str]]:
    """Load and slice one case; raise DataError with the skip reason when unusable."""
    if case.label is None:
        raise DataError(f"no label (expected label{case.number:04d}.nii.gz)")
    try:
        ct, ct_affine = load_ct(case.image)
    except DataError as exc:
        raise DataError(f"unreadable CT: {exc}") from exc
    try:
        label, label_affine = load_label(case.label)
    except DataError as exc:
        raise DataError(f"unreadable label: {exc}") from exc
    if label.shape != ct.shape:
        raise DataError(f"label shape {label.shape} differs from CT shape {ct.shape}")
    if not label.any():
        raise DataError(f"empty label {case.label.name} (no pancreas voxel)")
    notes = []
    if not np.allclose(ct_affine, label_affine, atol=_AFFINE_TOL_MM):
        notes.append(
            f"{case.name}: CT and label headers give different geometry; voxels were paired "
            "by index after reorientation, check the overlay"
        )
    mean_hu = float(ct[label].mean())
    if not _PANCREAS_HU_RANGE[0] <= mean_hu <= _PANCREAS_HU_RANGE[1]:
        notes.append(
            f"{case.name}: mean CT value under the label is {mean_hu:.0f} HU (pancreas is about "
            "30-150 HU); is the label aligned and the CT in HU?"
        )
    return slice_pairs(ct, label, window, size), notes


def prepare_nih(
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    split: str = "patient",
    val_fraction: float = 0.2,
    val_cases: Sequence[int] | None = None,
    window: tuple[float, float] = DEFAULT_WINDOW,
    size: tuple[int, int] = DEFAULT_SIZE,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Report:
    """Prepare NIH Pancreas-CT as PNG pairs in ``out_dir`` (atomically; a previous preparation
    only with ``overwrite``, see :func:`unet.fileio.atomic_directory`) and report.

    Each usable case contributes its pancreas slices as ``case0001_z045`` pairs (see the
    module docstring for orientation, intensity and crop). Split:

    * ``"patient"``: the val cases are ``val_cases`` when given, else
      ``round(val_fraction * n)`` (at least 1, at most ``n - 1``) of the ``n`` usable cases,
      drawn by ``numpy.random.default_rng(seed).permutation`` of the sorted case numbers;
    * ``"slice"``: the original's hold-out: the same count rule over all slices of all
      cases (sorted by name, then permuted with the seed), so a patient may be in both.

    The split depends only on the set of usable cases (or slices) and the seed.
    A case with no label, an unreadable CT or label, a label shape that differs from the CT
    or an empty label is skipped and listed in ``Report.skipped`` and in the manifest
    (``prepare.json``, which also records cases per split, window, size, split and seed).

    Raises :class:`ConfigError` for invalid options (also a ``val_cases`` number that is not
    in the images folder) and :class:`DataError` when the folders hold no usable case, when
    a split would be empty or when every requested val case was skipped.
    """
    window = (float(window[0]), float(window[1]))
    size = (int(size[0]), int(size[1]))
    _check_options(split, val_fraction, val_cases, window, size)
    cases, rejected, notes = find_cases(images_dir, labels_dir)
    numbers = {c.number for c in cases} | {n for n in (case_number(r[0]) for r in rejected) if n is not None}
    if val_cases is not None:
        missing = sorted(set(int(n) for n in val_cases) - numbers)
        if missing:
            raise ConfigError(f"val_cases {missing} are not in {images_dir}")

    out_dir = Path(out_dir)
    report = Report(out_dir=out_dir, split=split, skipped=list(rejected), warnings=list(notes))
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        names: dict[int, list[str]] = {}
        bar = tqdm(cases, desc="NIH cases", unit="case", disable=not progress)
        for case in bar:
            bar.set_postfix_str(case.name)
            try:
                pairs, case_notes = _process_case(case, window, size)
            except DataError as exc:
                report.skipped.append((case.name, str(exc)))
                continue
            report.warnings.extend(case_notes)
            names[case.number] = []
            for z, image, mask in pairs:
                name = f"{case.tag}_z{z:03d}"
                write_pair(tmp, "train", name, image, mask)
                names[case.number].append(name)
        bar.close()

        if not names:
            reasons = "; ".join(f"{n}: {r}" for n, r in report.skipped)
            raise DataError(f"no usable NIH case in {images_dir} ({reasons})")
        val_names = _choose_val(names, split, val_fraction, val_cases, seed, report)
        for name in val_names:
            for sub in ("images", "masks"):
                (tmp / "val" / sub).mkdir(parents=True, exist_ok=True)
                os.replace(tmp / "train" / sub / f"{name}.png", tmp / "val" / sub / f"{name}.png")
        total = sum(len(v) for v in names.values())
        report.slices = {"train": total - len(val_names), "val": len(val_names)}
        val_set = set(val_names)
        report.cases = {
            "train": sorted(n for n, v in names.items() if any(s not in val_set for s in v)),
            "val": sorted(n for n, v in names.items() if any(s in val_set for s in v)),
        }
        write_manifest(tmp, _manifest(report, images_dir, labels_dir, window, size, seed, val_fraction, val_cases))
    return report


def _choose_val(
    names: dict[int, list[str]],
    split: str,
    val_fraction: float,
    val_cases: Sequence[int] | None,
    seed: int,
    report: Report,
) -> list[str]:
    """Names of the slices that go to val (see :func:`prepare_nih` for the rule)."""
    rng = np.random.default_rng(seed)
    if split == "slice":
        everything = sorted(s for v in names.values() for s in v)
        k = _n_val(len(everything), val_fraction, "slices")
        return sorted(everything[i] for i in rng.permutation(len(everything))[:k])
    usable = sorted(names)
    if val_cases is not None:
        chosen = sorted(set(int(n) for n in val_cases) & set(usable))
        dropped = sorted(set(int(n) for n in val_cases) - set(usable))
        if dropped:
            report.warnings.append(f"requested val cases {dropped} were skipped")
        if not chosen:
            raise DataError(f"none of the val cases {sorted(val_cases)} is usable")
        if len(chosen) == len(usable):
            raise DataError("every usable case is a val case; the train split would be empty")
    else:
        k = _n_val(len(usable), val_fraction, "cases")
        chosen = sorted(usable[i] for i in rng.permutation(len(usable))[:k])
    return sorted(s for n in chosen for s in names[n])


def _manifest(
    report: Report,
    images_dir: str | os.PathLike[str],
    labels_dir: str | os.PathLike[str],
    window: tuple[float, float],
    size: tuple[int, int],
    seed: int,
    val_fraction: float,
    val_cases: Sequence[int] | None,
) -> dict[str, Any]:
    return {
        "dataset": "nih-pancreas-ct",
        "source": {"images": str(Path(images_dir).resolve()), "labels": str(Path(labels_dir).resolve())},
        "split": report.split,
        "val_fraction": float(val_fraction),
        "val_cases": None if val_cases is None else sorted(int(n) for n in val_cases),
        "seed": int(seed),
        "cases": report.cases,
        "slices": report.slices,
        "skipped": [{"case": name, "reason": reason} for name, reason in report.skipped],
        "warnings": report.warnings,
        "window_hu": list(window),
        "intensity": "rint(255 * c / max(c)), c = clip(HU, lo, hi) - lo, per slice; 0 if max(c) == 0",
        "size": list(size),
        "crop": "window centred on the median foreground pixel, clamped inside the slice, pad 0",
        "orientation": "canonical RAS+, axial slices along z; rows anterior->posterior, columns patient right->left",
        "names": "case<NNNN>_z<ZZZ>, z = canonical slice index (inferior -> superior)",
    }


# --------------------------------------------------------------------------------------------
# Synthetic stand-in
# --------------------------------------------------------------------------------------------


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
