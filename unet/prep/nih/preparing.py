"""Preparing NIH Pancreas-CT: find the cases, slice each one, split into train and val and
write the PNG pairs with their manifest and a report (see :mod:`unet.prep.nih`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from unet.errors import ConfigError, DataError
from unet.fileio import atomic_directory
from unet.prep.pngpairs import write_manifest, write_pair
from unet.progress import bar_disable

from .reading import load_ct, load_label
from .slicing import DEFAULT_SIZE, DEFAULT_WINDOW, slice_pairs

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_DIGITS = re.compile(r"(\d+)(?!.*\d)")
_LABEL_NAME = re.compile(r"^label(\d+)\.nii(\.gz)?$", re.IGNORECASE)
#: Canonical affines of CT and label that differ by more than this (mm) raise a warning.
_AFFINE_TOL_MM = 0.5
#: Mean CT value under the label outside this range (HU) raises a misalignment warning.
_PANCREAS_HU_RANGE = (-150.0, 300.0)


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


@dataclass
class Report:
    """What :func:`prepare_nih` did.

    ``cases``: case numbers per split; ``slices``: slice count per split; ``skipped``:
    ``(name, reason)`` per unusable case; ``warnings``: notes on used cases (e.g. CT and
    label geometry disagree) and stray label files.
    """

    out_dir: Path
    split: str
    name: str = "NIH Pancreas-CT"
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
            f"{self.name}: {len(self.used)} of {total} cases used, "
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
    case: Case, window: tuple[float, float], size: tuple[int, int], pancreas: bool = True
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], list[str]]:
    """Load and slice one case; raise DataError with the skip reason when unusable. ``pancreas``:
    warn when the mean value under the label is not pancreas-like HU (the NIH data)."""
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
        raise DataError(f"empty label {case.label.name} (no labelled voxel)")
    notes = []
    if not np.allclose(ct_affine, label_affine, atol=_AFFINE_TOL_MM):
        notes.append(
            f"{case.name}: CT and label headers give different geometry; voxels were paired "
            "by index after reorientation, check the overlay"
        )
    mean_hu = float(ct[label].mean())
    if pancreas and not _PANCREAS_HU_RANGE[0] <= mean_hu <= _PANCREAS_HU_RANGE[1]:
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
    name: str | None = None,
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

    The split depends only on the set of usable cases (or slices) and the seed. ``name``
    (default: the images folder's name) names the data set in the summary, ``prepare.json``
    and the results; the check that the label covers pancreas-like HU runs unless ``name``
    is given without the word "pancreas" (other data).
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
    pancreas = name is None or "pancreas" in name.lower()
    report = Report(out_dir=out_dir, split=split, name=name or Path(images_dir).resolve().name,
                    skipped=list(rejected), warnings=list(notes))
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        names: dict[int, list[str]] = {}
        bar = tqdm(cases, desc="NIH cases", unit="case", disable=bar_disable(not progress))
        for case in bar:
            bar.set_postfix_str(case.name)
            try:
                pairs, case_notes = _process_case(case, window, size, pancreas)
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
        "name": report.name,
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
