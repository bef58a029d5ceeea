"""Reader of the spinal cord grey matter (SCGM challenge 2017) training release, from NIfTI.

The release is one folder of gzipped NIfTI volumes::

    site{1..4}-sc{01..10}-image.nii.gz          T2*-weighted axial volume
    site{s}-sc{nn}-mask-r{1..4}.nii.gz          grey matter mask by rater 1..4

(``.nii`` is accepted too; other files, such as the release's ``*-levels.txt``, are ignored.)
No preprocessing step is needed (SPEC §7): :class:`GMDataset` reads the volumes, cuts them
along axis 2 (axial slices), resamples every slice in-plane to 0.25 mm and pairs each slice
with each rater's mask, so one slice annotated by 4 raters gives 4 samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from unet.data.augment import augment_gm
from unet.data.transforms import center_crop_or_pad, normalize
from unet.errors import DataError, MissingDataError
from unet.nifti_check import check_nifti
from unet.progress import bar_disable
from unet.transforms import resample_inplane, resampled_shape  # the GM input transform's (re-exported)

__all__ = [
    "GMDataset",
    "RESOLUTION_MM",
    "ReleaseListing",
    "Subject",
    "list_release",
    "load_subject_slices",
    "load_volume",
    "resample_inplane",
    "resampled_shape",
    "scan_release",
]

#: In-plane resolution (mm) every slice is resampled to (the original's 0.25 x 0.25 mm).
RESOLUTION_MM = 0.25

_IMAGE_RE = re.compile(r"^site(\d+)-sc(\d+)-image\.nii(\.gz)?$")
_MASK_RE = re.compile(r"^site(\d+)-sc(\d+)-mask-r(\d+)\.nii(\.gz)?$")
_NORMALIZE_MODES = ("instance", "none")


@dataclass
class Subject:
    """One subject of the release: its image volume and the masks of each rater.

    ``masks`` is a list of ``(rater number, mask path)`` sorted by rater.
    """

    site: int
    subject: int
    image: Path
    masks: list[tuple[int, Path]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The release's name of the subject, e.g. ``site1-sc09``."""
        return f"site{self.site}-sc{self.subject:02d}"


@dataclass
class ReleaseListing:
    """What the file names of a release folder say, before anything is read.

    ``subjects`` holds every image that has at least one mask; ``problems`` lists, one line
    each naming the file, what makes the folder unusable for :func:`scan_release` (an image
    without any mask, a mask without its image, a duplicate); ``ignored`` the other files.
    """

    root: Path
    subjects: list[Subject]
    problems: list[str]
    ignored: list[str]


def list_release(root: str | Path) -> ReleaseListing:
    """Match the SCGM file names in ``root`` (not recursive) and collect problems without raising.

    Matches ``site{s}-sc{nn}-image.nii[.gz]`` and ``site{s}-sc{nn}-mask-r{r}.nii[.gz]``;
    nothing is read from the files. Raises :class:`MissingDataError` when ``root`` is missing,
    not a folder, empty, or holds no file with an SCGM name.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(f"GM release folder {root} does not exist (or is not a folder)")
    names = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not names:
        raise MissingDataError(f"GM release folder {root} is empty")
    images: dict[tuple[int, int], Path] = {}
    masks: dict[tuple[int, int], dict[int, Path]] = {}
    problems: list[str] = []
    ignored: list[str] = []
    for name in names:
        if m := _IMAGE_RE.match(name):
            key = (int(m.group(1)), int(m.group(2)))
            if key in images:
                problems.append(f"{root / name}: duplicate of {images[key].name}")
                continue
            images[key] = root / name
        elif m := _MASK_RE.match(name):
            key = (int(m.group(1)), int(m.group(2)))
            rater = int(m.group(3))
            per_rater = masks.setdefault(key, {})
            if rater in per_rater:
                problems.append(f"{root / name}: duplicate of {per_rater[rater].name}")
                continue
            per_rater[rater] = root / name
        else:
            ignored.append(name)
    if not images and not masks:
        raise MissingDataError(
            f"no SCGM files (site<s>-sc<nn>-image.nii.gz, site<s>-sc<nn>-mask-r<r>.nii.gz) "
            f"in {root}"
        )
    for key, per_rater in sorted(masks.items()):
        if key not in images:
            first = per_rater[min(per_rater)]
            problems.append(
                f"{first}: mask without its image site{key[0]}-sc{key[1]:02d}-image.nii.gz"
            )
    subjects = []
    for key, image in sorted(images.items()):
        if key not in masks:
            problems.append(
                f"{image}: image volume without any mask (site{key[0]}-sc{key[1]:02d}-mask-r*; "
                "test-set volumes have no masks, keep only the training release in this folder)"
            )
            continue
        raters = sorted(masks[key].items())
        subjects.append(Subject(site=key[0], subject=key[1], image=image, masks=raters))
    return ReleaseListing(root=root, subjects=subjects, problems=problems, ignored=ignored)


def scan_release(root: str | Path) -> list[Subject]:
    """List the subjects of an SCGM release folder, sorted by (site, subject).

    Matches ``site{s}-sc{nn}-image.nii[.gz]`` and ``site{s}-sc{nn}-mask-r{r}.nii[.gz]`` in
    ``root`` (not recursive); other files are ignored. Nothing is read from the files.

    Raises :class:`MissingDataError` when ``root`` is missing, not a folder, empty, or holds
    no file with an SCGM name; :class:`DataError` naming the file for an image without any
    mask (the test release sc11-sc20 has none: keep only the training release in the folder),
    a mask without its image, or the same image/mask present twice (``.nii`` and ``.nii.gz``).
    """
    listing = list_release(root)
    if listing.problems:
        more = len(listing.problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise DataError(listing.problems[0] + suffix)
    return listing.subjects


def load_volume(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a NIfTI volume as float32 ``(X, Y, Z)`` with its voxel sizes in mm.

    Trailing axes of length 1 beyond the third are dropped (``(X, Y, Z, 1)`` is a 3-D volume);
    a 2-D file is read as one slice ``(X, Y, 1)``. Raises :class:`DataError` naming the file
    for an unreadable or corrupt file, a 4-D (or higher) volume, a non-finite value or a
    non-positive in-plane voxel size.
    """
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    check_nifti(path, img)  # declared size against the file, finite affine and voxel sizes: before allocating
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise DataError(f"{path}: cannot read NIfTI file ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"{path}: contains NaN or infinite values")
    zooms = (zooms + (1.0, 1.0, 1.0))[:3]
    if zooms[0] <= 0 or zooms[1] <= 0:
        raise DataError(f"{path}: invalid voxel size {zooms[:2]} mm in the header")
    return data, zooms


def load_subject_slices(
    subject: Subject, resolution_mm: float = RESOLUTION_MM
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Read a subject and return every (axial slice, rater mask) pair, resampled in-plane.

    Slices are cut along axis 2 of the volume. Both volumes are resampled in-plane to
    ``resolution_mm`` with the image header's voxel sizes ``header.get_zooms()[:2]``
    (:func:`resample_inplane`): the image bilinearly; the mask is binarised (``> 0.5``),
    resampled bilinearly as float and thresholded again at ``>= 0.5``.

    Returns a list of ``(image float32 (H, W), mask uint8 (H, W) in {0, 1}, name)`` ordered by
    slice then rater, with names like ``site1-sc09-r2-z007``. The image intensities are the
    file's, unnormalised. Raises :class:`DataError` naming the file for an unreadable/corrupt
    file, a 4-D image, or a mask whose shape differs from its image.
    """
    raw_image, zooms = load_volume(subject.image)
    image = resample_inplane(raw_image, zooms[:2], resolution_mm, order=1)
    masks = []
    for rater, path in subject.masks:
        mask, _ = load_volume(path)
        if mask.shape != raw_image.shape:
            raise DataError(
                f"{path}: mask shape {mask.shape} differs from the shape {raw_image.shape} "
                f"of its image {subject.image.name}"
            )
        binary = (mask > 0.5).astype(np.float32)
        resampled = resample_inplane(binary, zooms[:2], resolution_mm, order=1)
        masks.append((rater, (resampled >= 0.5).astype(np.uint8)))
    out = []
    for z in range(image.shape[2]):
        slice_image = np.ascontiguousarray(image[:, :, z])
        for rater, mask in masks:
            name = f"{subject.name}-r{rater}-z{z:03d}"
            out.append((slice_image, np.ascontiguousarray(mask[:, :, z]), name))
    return out


def _is_empty_image(image: np.ndarray) -> bool:
    """An image slice is empty when it is constant (all zeros included): nothing to segment."""
    return bool(image.max() == image.min())


class GMDataset(Dataset):
    """2-D samples ``(image, mask)`` of the SCGM release: every (axial slice, rater) pair.

    Everything is read at construction (a progress bar runs over the subjects):
    :func:`scan_release`, then for each selected subject :func:`load_subject_slices` (axis-2
    slices resampled in-plane to ``resolution_mm``). Only subjects whose number is in
    ``subjects`` and whose site is in ``sites`` (``None`` = every site) are kept.

    With ``drop_empty`` (training) a sample is dropped when its mask has no foreground pixel or
    its image slice is constant (all zeros included); the test is made on the whole resampled
    slice, before cropping (as the original's slice filter, which saw uncropped slices).
    Without it (validation) every sample is kept.

    Slices are centre-cropped / zero-padded to ``crop_size = (H, W)`` once at construction
    (deterministic, so identical to cropping in ``__getitem__``, and it bounds memory).
    ``__getitem__`` then applies, when ``augment``, :func:`unet.data.augment.augment_gm`
    (elastic p = 0.3, then affine), and finally :func:`unet.data.transforms.normalize` with
    mode ``normalize`` (``"instance"`` or ``"none"``) to the image.

    Randomness: each augmented ``__getitem__`` draws a seed from torch's global RNG,
    ``int(torch.randint(0, 2**31 - 1, (1,)))``, and builds ``np.random.default_rng(seed)``.
    With ``num_workers=0`` the main process's torch RNG is seeded by the trainer, and in
    DataLoader workers torch seeds each worker's RNG from the loader's generator, so in both
    cases a seeded run draws the same augmentations (and workers do not repeat each other).

    Raises :class:`MissingDataError` for a missing/empty release folder, :class:`DataError`
    for a bad file (see :func:`load_subject_slices`), a requested site absent from the
    release, subject numbers of which none is present, or when no sample is left after
    filtering.
    """

    def __init__(
        self,
        root: str | Path,
        subjects: list[int],
        sites: list[int] | None,
        drop_empty: bool,
        crop_size: tuple[int, int],
        normalize: str,
        augment: bool,
        resolution_mm: float = RESOLUTION_MM,
        progress: bool = True,
    ) -> None:
        if normalize not in _NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
        if len(crop_size) != 2 or min(int(c) for c in crop_size) < 1:
            raise ValueError(f"crop_size must be two positive integers, got {crop_size!r}")
        if resolution_mm <= 0:
            raise ValueError(f"resolution_mm must be > 0, got {resolution_mm!r}")
        self.root = Path(root)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.normalize = normalize
        self.augment = bool(augment)
        self.drop_empty = bool(drop_empty)
        self.resolution_mm = float(resolution_mm)

        release = scan_release(self.root)
        present_sites = sorted({s.site for s in release})
        if sites is not None:
            missing = sorted(set(sites) - set(present_sites))
            if missing:
                raise DataError(
                    f"site(s) {missing} not in the GM release {self.root} "
                    f"(sites present: {present_sites})"
                )
        wanted_subjects = set(subjects)
        chosen = [
            s
            for s in release
            if s.subject in wanted_subjects and (sites is None or s.site in set(sites))
        ]
        if not chosen:
            raise DataError(
                f"none of the subjects {sorted(wanted_subjects)} (sites "
                f"{'all' if sites is None else sorted(sites)}) is in the GM release {self.root}"
            )
        self.subjects: list[str] = [s.name for s in chosen]

        self._images: list[np.ndarray] = []  # one per kept slice
        self._masks: list[np.ndarray] = []  # one per kept sample
        self._samples: list[tuple[int, int, str]] = []  # (image index, mask index, name)
        self.n_total = 0
        for subject in tqdm(chosen, desc="GM volumes", unit="subject", disable=bar_disable(not progress)):
            image_index: dict[str, int] = {}
            for image, mask, name in load_subject_slices(subject, self.resolution_mm):
                self.n_total += 1
                if self.drop_empty and (_is_empty_image(image) or not mask.any()):
                    continue
                key = name.rsplit("-", 1)[1]  # "z007": the raters of a slice share its image
                if key not in image_index:
                    image_index[key] = len(self._images)
                    self._images.append(center_crop_or_pad(image, self.crop_size, fill=0.0))
                self._masks.append(center_crop_or_pad(mask, self.crop_size, fill=0))
                self._samples.append((image_index[key], len(self._masks) - 1, name))
        if not self._samples:
            raise DataError(
                f"no slices left after filtering the GM release {self.root}: "
                f"{self.n_total} (slice, rater) samples in subjects {self.subjects}, "
                f"all with an empty mask or a constant image"
            )

    def __len__(self) -> int:
        """Number of (slice, rater) samples kept."""
        return len(self._samples)

    def sample_name(self, index: int) -> str:
        """Name of sample ``index``, e.g. ``site1-sc09-r2-z007`` (site, subject, rater, slice)."""
        return self._samples[index][2]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image, mask)`` as float32 tensors of shape ``(1, H, W)``, mask 0./1.

        Order: centre crop/pad (done at construction), augmentation when enabled (seeded from
        torch's global RNG, see the class docstring), then image normalisation.
        """
        image_idx, mask_idx, _ = self._samples[index]
        image = self._images[image_idx]
        mask = self._masks[mask_idx]
        if self.augment:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
            image, mask = augment_gm(image, mask, np.random.default_rng(seed))
        image = normalize(image, self.normalize)
        # Copies (np.array), so callers may modify the batch without touching the cache;
        # torch.from_numpy on a float32 array is much faster than torch.tensor(array).
        return (
            torch.from_numpy(np.array(image, dtype=np.float32)).unsqueeze(0),
            torch.from_numpy(np.array(mask, dtype=np.float32)).unsqueeze(0),
        )

    def describe(self) -> dict[str, Any]:
        """Counts for logs: subjects loaded, samples read, samples kept."""
        return {
            "root": str(self.root),
            "subjects": list(self.subjects),
            "samples_read": self.n_total,
            "samples_kept": len(self._samples),
            "slices_kept": len(self._images),
        }
