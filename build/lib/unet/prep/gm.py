"""Synthetic stand-in for the SCGM challenge release, and a checker for a real release.

:func:`write_synthetic_release` writes NIfTI files with the release's exact names
(``site{s}-sc{nn}-image.nii.gz``, ``site{s}-sc{nn}-mask-r{1..4}.nii.gz``) so that the real
reader, :mod:`unet.data.gm`, is what the GM trainer uses on it. Each volume is a few axial
slices of a neck: background tissue, a bright CSF ring, an elliptical cord (white matter) and
a butterfly-shaped grey matter that is brighter than the white matter (T2*-like contrast),
smoothed and noisy. Four rater masks of the grey matter differ by about a pixel (shift,
dilation). The first and last slices show no grey matter, so the empty-slice filter matters.

:func:`inspect_release` / :func:`check_release` read a real release folder and report the
sites, subjects, raters, voxel sizes and every problem the reader would stop on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from unet.data.gm import list_release, load_volume
from unet.errors import ConfigError, DataError
from unet.fileio import GM_RELEASE, atomic_directory

__all__ = [
    "SITE_PROFILES",
    "ReleaseReport",
    "check_release",
    "inspect_release",
    "write_synthetic_release",
]

#: Subjects of the default split (SPEC §7): 01-08 train, 09-10 validation.
TRAIN_SUBJECTS = tuple(range(1, 9))
VAL_SUBJECTS = (9, 10)


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition of one synthetic site: voxel size (mm), stored dtype, gain and contrast.

    ``levels`` are the noise-free intensities of background, CSF, white and grey matter on a
    0-1 scale; the stored value is ``gain * intensity`` cast to ``dtype``. ``noise`` is the
    standard deviation of the additive Gaussian noise on the same 0-1 scale.
    """

    zooms: tuple[float, float, float]
    dtype: str
    gain: float
    levels: tuple[float, float, float, float]
    noise: float


#: Per-site differences (roughly after the real release: sites 1-2 at 0.5 mm in-plane and 5 mm
#: slices, site 3 finer, site 4 anisotropic in-plane; different scanners, different scales).
SITE_PROFILES: dict[int, SiteProfile] = {
    1: SiteProfile((0.5, 0.5, 5.0), "int16", 1000.0, (0.12, 0.90, 0.38, 0.58), 0.030),
    2: SiteProfile((0.45, 0.45, 4.0), "float32", 1.0, (0.20, 0.80, 0.45, 0.62), 0.040),
    3: SiteProfile((0.3, 0.3, 2.5), "uint16", 3000.0, (0.08, 0.95, 0.30, 0.52), 0.030),
    4: SiteProfile((0.35, 0.4, 5.0), "float32", 250.0, (0.15, 0.85, 0.40, 0.55), 0.035),
}

#: In-plane matrix of a 0.5 mm site; other sites cover the same field of view.
REFERENCE_ZOOM_MM = 0.5
MIN_FOV_MM = 20.0


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """3x3 rotation matrix for small angles (radians) about x, then y, then z."""
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(zooms: tuple[float, float, float], shape: tuple[int, int, int], rng) -> np.ndarray:
    """A scanner-like voxel-to-world affine: axis flips (LPI-ish), a tilt of a few degrees and an
    offset. Its column norms are ``zooms``, so ``header.get_zooms()`` returns them."""
    tilt = np.deg2rad(rng.uniform(-6.0, 6.0, size=3))
    linear = _rotation(*tilt) @ np.diag([-zooms[0], -zooms[1], zooms[2]])
    centre = (np.array(shape) - 1) / 2.0
    world_centre = np.array([rng.uniform(-5, 5), rng.uniform(-40, -20), rng.uniform(-60, -20)])
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = world_centre - linear @ centre
    return affine


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float,
             angle_deg: float = 0.0) -> np.ndarray:
    """Boolean mask of points ``(u, v)`` inside an ellipse centred ``(cu, cv)`` with radii
    ``(ru, rv)`` rotated by ``angle_deg`` (all lengths in mm)."""
    t = np.deg2rad(angle_deg)
    du, dv = u - cu, v - cv
    a = (du * np.cos(t) + dv * np.sin(t)) / ru
    b = (-du * np.sin(t) + dv * np.cos(t)) / rv
    return a * a + b * b <= 1.0


def _grey_matter(u: np.ndarray, v: np.ndarray, su: float, sv: float) -> np.ndarray:
    """Butterfly/H-shaped grey matter in cord coordinates (mm; ``u`` lateral, ``v`` anterior),
    for a cord scaled by ``(su, sv)`` relative to 6.5 x 4.5 mm half-axes."""
    u, v = u / su, v / sv
    gm = np.zeros(u.shape, dtype=bool)
    for side in (-1.0, 1.0):
        gm |= _ellipse(u, v, side * 2.3, 1.3, 1.3, 1.7, side * 35.0)  # ventral horns
        gm |= _ellipse(u, v, side * 1.7, -1.9, 0.6, 2.0, -side * 30.0)  # dorsal horns
    gm |= (np.abs(u) <= 2.0) & (np.abs(v) <= 0.5)  # grey commissure
    gm |= _ellipse(u, v, 0.0, 0.0, 0.9, 0.9)
    return gm


def _subject_volumes(
    profile: SiteProfile, size: int, n_slices: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Return ``(image volume, [4 rater masks], affine)`` of one synthetic subject."""
    zx, zy, _ = profile.zooms
    nx = max(8, int(round(size * REFERENCE_ZOOM_MM / zx)))
    ny = max(8, int(round(size * REFERENCE_ZOOM_MM / zy)))
    x = (np.arange(nx) - (nx - 1) / 2.0) * zx
    y = (np.arange(ny) - (ny - 1) / 2.0) * zy
    xx, yy = np.meshgrid(x, y, indexing="ij")
    fov = min(nx * zx, ny * zy)
    a0, b0 = rng.uniform(5.5, 7.0), rng.uniform(3.8, 4.8)
    centre0 = rng.uniform(-0.06, 0.06, size=2) * fov
    drift = rng.normal(0.0, 0.3, size=(n_slices, 2)).cumsum(axis=0)
    angle0 = rng.uniform(-12.0, 12.0)
    bg, csf, wm, gm_level = profile.levels
    bias = ndimage.gaussian_filter(rng.normal(size=(nx, ny)), sigma=nx / 6, mode="reflect")
    bias = 1.0 + 0.15 * bias / max(float(np.abs(bias).max()), 1e-6)

    image = np.zeros((nx, ny, n_slices), dtype=np.float32)
    truth = np.zeros((nx, ny, n_slices), dtype=bool)
    for z in range(n_slices):
        a = a0 * (1.0 + 0.05 * np.sin(z))
        b = b0 * (1.0 + 0.05 * np.cos(z))
        cx, cy = centre0 + drift[z]
        t = np.deg2rad(angle0 + 2.0 * z)
        u = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)
        v = -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        cord = _ellipse(u, v, 0.0, 0.0, a, b)
        csf_ring = _ellipse(u, v, 0.0, 0.0, a + 2.0, b + 2.0) & ~cord
        has_gm = 0 < z < n_slices - 1  # the first and last slices show no grey matter
        gm = _grey_matter(u, v, a / 6.5, b / 4.5) & cord if has_gm else np.zeros_like(cord)
        level = np.full(cord.shape, bg)
        level[csf_ring] = csf
        level[cord] = wm
        level[gm] = gm_level
        smooth = ndimage.gaussian_filter(level, sigma=0.7)  # partial volume
        noisy = smooth * bias + rng.normal(0.0, profile.noise, size=smooth.shape)
        image[:, :, z] = np.clip(noisy, 0.0, None)
        truth[:, :, z] = gm

    masks = []
    cross = ndimage.generate_binary_structure(2, 1)
    for rater in range(1, 5):
        mask = np.zeros_like(truth, dtype=np.uint8)
        for z in range(n_slices):
            m = truth[:, :, z]
            if m.any():
                if rater == 2:
                    m = ndimage.binary_dilation(m, structure=cross)
                elif rater == 4 and rng.random() < 0.5:
                    m = ndimage.binary_dilation(m, structure=cross)
                if rater in (3, 4) or rng.random() < 0.3:
                    shift = rng.integers(-1, 2, size=2)
                    m = np.roll(m, shift=tuple(int(s) for s in shift), axis=(0, 1))
            mask[:, :, z] = m
        masks.append(mask)
    stored = (image * profile.gain).astype(profile.dtype)
    return stored, masks, _affine(profile.zooms, (nx, ny, n_slices), rng)


def write_synthetic_release(
    out_dir: str | Path,
    sites: Iterable[int] = (1, 2),
    subjects: Iterable[int] = range(1, 11),
    n_slices: int = 6,
    size: int = 100,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic SCGM-like training release into ``out_dir`` (atomically).

    A non-empty ``out_dir`` is refused unless it holds an earlier synthetic release
    (``synthetic_release.json``) and ``overwrite`` is true; then only the release's files are
    replaced and other files in the folder are kept (:func:`unet.fileio.atomic_directory`).

    For every site in ``sites`` (1-4, profiles in :data:`SITE_PROFILES`) and subject number in
    ``subjects`` (default 01-10: 01-08 train, 09-10 validation) it writes
    ``site{s}-sc{nn}-image.nii.gz`` (``X x Y x n_slices``, with ``X ~ size * 0.5 / zoom_x`` so
    every site covers ``size * 0.5`` mm, i.e. ``size`` pixels at 0.5 mm) and four
    ``site{s}-sc{nn}-mask-r{1..4}.nii.gz`` (uint8 0/1). Affines are non-identity (axis flips,
    a tilt of a few degrees, an offset) with the site's voxel sizes. Slices 0 and
    ``n_slices - 1`` contain no grey matter. A ``synthetic_release.json`` records the options.

    The output depends only on the arguments (``seed`` drives one ``numpy`` generator per
    subject). Raises :class:`ConfigError` for an unknown site, a subject outside 1-99,
    ``n_slices < 3`` or a field of view under 20 mm (``size < 40``). Returns ``out_dir``.
    """
    sites = sorted(set(int(s) for s in sites))
    subjects = sorted(set(int(s) for s in subjects))
    if not sites or any(s not in SITE_PROFILES for s in sites):
        raise ConfigError(f"synthetic GM sites must be among {sorted(SITE_PROFILES)}, got {sites}")
    if not subjects or any(not 1 <= s <= 99 for s in subjects):
        raise ConfigError(f"synthetic GM subjects must be numbers 1-99, got {subjects}")
    if n_slices < 3:
        raise ConfigError(f"synthetic GM volumes need at least 3 slices, got {n_slices}")
    if size * REFERENCE_ZOOM_MM < MIN_FOV_MM:
        raise ConfigError(
            f"synthetic GM size must be at least {int(MIN_FOV_MM / REFERENCE_ZOOM_MM)} pixels "
            f"(a {MIN_FOV_MM:g} mm field of view at {REFERENCE_ZOOM_MM} mm), got {size}"
        )
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, GM_RELEASE, overwrite=overwrite) as tmp:
        for site in sites:
            profile = SITE_PROFILES[site]
            for subject in subjects:
                rng = np.random.default_rng([seed, site, subject])
                image, masks, affine = _subject_volumes(profile, size, n_slices, rng)
                stem = f"site{site}-sc{subject:02d}"
                nib.save(nib.Nifti1Image(image, affine), tmp / f"{stem}-image.nii.gz")
                for rater, mask in enumerate(masks, start=1):
                    nib.save(nib.Nifti1Image(mask, affine), tmp / f"{stem}-mask-r{rater}.nii.gz")
        info = {
            "kind": "synthetic SCGM-like release (not real data)",
            "sites": sites,
            "subjects": subjects,
            "n_slices": n_slices,
            "size": size,
            "seed": seed,
            "voxel_sizes_mm": {str(s): list(SITE_PROFILES[s].zooms) for s in sites},
        }
        (tmp / "synthetic_release.json").write_text(json.dumps(info, indent=2) + "\n")
    return out_dir


@dataclass
class ReleaseReport:
    """What :func:`inspect_release` found in a release folder.

    ``problems`` are what would make the reader raise (the folder is unusable until fixed);
    ``warnings`` are unusual but usable (a rater missing, a site without validation subjects).
    """

    root: Path
    subjects: dict[int, list[int]] = field(default_factory=dict)  # site -> subject numbers
    raters: dict[str, list[int]] = field(default_factory=dict)  # subject name -> raters
    voxel_sizes: dict[tuple[float, float, float], list[str]] = field(default_factory=dict)
    n_slices: int = 0
    n_slices_with_gm: int = 0
    ignored: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """True when there is no problem and both train (01-08) and val (09-10) subjects exist."""
        numbers = {n for subjects in self.subjects.values() for n in subjects}
        return (
            not self.problems
            and bool(numbers & set(TRAIN_SUBJECTS))
            and bool(numbers & set(VAL_SUBJECTS))
        )

    def summary(self) -> str:
        """Multi-line human-readable summary (sites, subjects, raters, voxel sizes, problems)."""
        lines = [f"SCGM release: {self.root}"]
        lines.append(f"sites: {', '.join(str(s) for s in sorted(self.subjects)) or 'none'}")
        for site, numbers in sorted(self.subjects.items()):
            names = " ".join(f"{n:02d}" for n in numbers)
            counts = sorted({len(self.raters[f"site{site}-sc{n:02d}"]) for n in numbers})
            lines.append(
                f"  site {site}: {len(numbers)} subjects ({names}); "
                f"raters per subject: {', '.join(str(c) for c in counts)}"
            )
        for zooms, names in sorted(self.voxel_sizes.items()):
            size = " x ".join(f"{z:.3g}" for z in zooms)
            lines.append(f"voxel size {size} mm: {len(names)} volume(s)")
        lines.append(
            f"axial slices: {self.n_slices} ({self.n_slices_with_gm} with grey matter in some mask)"
        )
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} other file(s), e.g. {self.ignored[0]}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines.extend(f"  {p}" for p in self.problems)
        else:
            lines.append("problems: none")
        lines.append(f"usable: {'yes' if self.usable else 'no'}")
        return "\n".join(lines)


def inspect_release(root: str | Path) -> ReleaseReport:
    """Read every volume of a release folder and report what the GM reader would see.

    Reads each image and mask in full (so corrupt files are found), checks that masks have
    their image's shape, and counts slices and slices with grey matter. Every problem is
    collected (one line naming the file) instead of raised. Raises :class:`MissingDataError`
    only when the folder is missing, empty or holds no SCGM file.
    """
    listing = list_release(root)
    report = ReleaseReport(root=Path(root), ignored=listing.ignored)
    report.problems.extend(listing.problems)
    for subject in listing.subjects:
        report.subjects.setdefault(subject.site, []).append(subject.subject)
        report.raters[subject.name] = [r for r, _ in subject.masks]
        if len(subject.masks) != 4:
            report.warnings.append(
                f"{subject.name}: {len(subject.masks)} rater mask(s) "
                f"(r{', r'.join(str(r) for r, _ in subject.masks)}), 4 expected"
            )
        try:
            image, zooms = load_volume(subject.image)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        key = tuple(round(z, 3) for z in zooms)
        report.voxel_sizes.setdefault(key, []).append(subject.name)
        report.n_slices += image.shape[2]
        any_gm = np.zeros(image.shape[2], dtype=bool)
        for _rater, path in subject.masks:
            try:
                mask, _ = load_volume(path)
            except DataError as exc:
                report.problems.append(str(exc))
                continue
            if mask.shape != image.shape:
                report.problems.append(
                    f"{path}: mask shape {mask.shape} differs from the shape {image.shape} "
                    f"of its image {subject.image.name}"
                )
                continue
            any_gm |= (mask > 0.5).any(axis=(0, 1))
        report.n_slices_with_gm += int(any_gm.sum())
    for site, numbers in sorted(report.subjects.items()):
        if not set(numbers) & set(VAL_SUBJECTS):
            report.warnings.append(f"site {site} has no validation subject (09-10)")
        if not set(numbers) & set(TRAIN_SUBJECTS):
            report.warnings.append(f"site {site} has no training subject (01-08)")
    if len(report.voxel_sizes) == 0 and not report.problems:
        report.problems.append(f"{report.root}: no readable subject")
    return report


def check_release(root: str | Path) -> str:
    """Summary of a release folder (sites, subjects per site, raters per subject, voxel sizes,
    problems); see :func:`inspect_release`. Raises :class:`MissingDataError` for a missing,
    empty or non-SCGM folder."""
    return inspect_release(root).summary()
