"""EM (ISBI 2012) preparation: TIFF stacks or PNG pairs in, the PNG-pair folder out.

The public ISBI 2012 training release is two 30-page TIFF stacks of 512 x 512 uint8 slices:
``train-volume.tif`` (serial-section electron microscopy) and ``train-labels.tif``
(255 = cell interior, 0 = membrane). The positive class is the cell interior, about 78% of the
pixels. Preparation resizes every slice to 256 x 256, centre-crops 200 x 200, splits by slice
(no slice in both sets; by default the last fifth, slices 24-29 of 30, is validation),
optionally adds seeded offline augmentations of the training slices, and writes the layout of
:mod:`unet.prep.pngpairs` atomically.

:func:`synthetic_em_stack` draws an EM-like stand-in in the same format, so the pipeline runs
without the public data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage import transform as sktf

from unet.data.transforms import center_crop_or_pad, to_binary_mask
from unet.errors import ConfigError, DataError
from unet.fileio import atomic_directory, atomic_path
from unet.prep.pngpairs import write_manifest, write_pair
from unet.transforms import to_uint8  # the input transform's grey levels (re-exported)

#: Largest random rotation (degrees) of an offline augmentation; smaller when the crop would
#: otherwise reach outside the rotated slice.
MAX_ROTATION_DEG = 10.0

#: Default fraction of the slices (the last ones) used for validation: 6 of 30.
DEFAULT_VAL_FRACTION = 0.2


# --------------------------------------------------------------------------- TIFF stacks


def read_tiff_stack(path: str | Path) -> np.ndarray:
    """Read a multi-page TIFF as an (N, H, W) array (its stored dtype).

    Raises :class:`DataError` when the file is missing, unreadable, or not a stack of 2-D
    greyscale pages (a single page gives N = 1 only if stored as a 3-D series).
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"TIFF stack {path} not found; check the path (see docs/datasets.md for the download)")
    try:
        array = np.asarray(tifffile.imread(path))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read TIFF stack {path} ({reason}); the file is corrupt") from exc
    if array.ndim == 2:
        raise DataError(
            f"TIFF {path} is one 2-D image {array.shape}; --volume takes a stack of pages (N, H, W). For 2-D "
            "images put them (cut into tiles if you have one large image) with their masks in two folders and "
            "use --pairs-images and --pairs-masks"
        )
    if array.ndim != 3:
        raise DataError(
            f"TIFF {path} has array shape {array.shape}; expected a stack of greyscale pages "
            "(N, H, W) like train-volume.tif"
        )
    return array


def write_tiff_stack(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (N, H, W) array as an N-page greyscale TIFF (atomically).

    The result reads back with :func:`read_tiff_stack` and has the layout of the public
    ``train-volume.tif`` / ``train-labels.tif``.
    """
    import tifffile

    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise ValueError(f"expected a uint8 (N, H, W) array, got {array.dtype} {array.shape}")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, photometric="minisblack")


# --------------------------------------------------------------------------- synthetic data


def synthetic_em_stack(
    n_slices: int = 30, size: int = 512, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw an EM-like serial-section stack and its labels, both uint8 (n_slices, size, size).

    Lengths scale with ``s = size / 512``. Cells are the 3-D Voronoi cells of Poisson seed
    points (mean spacing about ``78 s`` pixels); slice ``z`` cuts the seed volume at depth
    ``4 s z`` pixels, so a cell persists over many slices and changes gradually (about 87% of
    label pixels agree between neighbouring slices). A pixel is membrane when its in-plane
    distance to the bisector of its two nearest seeds ``c1, c2``,
    ``(d2^2 - d1^2) / (2 |(c2 - c1)_yx|)``, is below half a thickness of ``7 s`` pixels
    (modulated smoothly by up to +-60%). Labels: 0 on membranes, 255 inside cells (about
    77-80% foreground). Image: grey level 168 plus a per-cell offset (sd 14), fine and coarse
    smoothed-noise texture (sd 9 and 7), dark organelle blobs (-70) that persist across
    slices, dark blurred membranes (-115), a slowly varying multiplicative illumination
    gradient and gaussian noise (sd 9), clipped to 0..255. Deterministic for a given ``seed``;
    about 3 s for 30 x 512 x 512 on two cores.
    """
    if n_slices < 1 or size < 16:
        raise ValueError(f"need n_slices >= 1 and size >= 16, got {n_slices}, {size}")
    rng = np.random.default_rng(seed)
    s = size / 512.0
    z_step = 4.0 * s
    cell = 78.0 * s
    margin = 2.0 * cell
    lo = np.array([-margin, -margin, -margin])
    hi = np.array([size + margin, size + margin, (n_slices - 1) * z_step + margin])
    n_seeds = max(8, int(np.prod(hi - lo) / cell**3 * 1.6))
    seeds = rng.uniform(lo, hi, size=(n_seeds, 3))
    tree = cKDTree(seeds)
    cell_level = rng.normal(0.0, 14.0, size=n_seeds)

    shape = (n_slices, size, size)
    waves = _plane_waves(rng, 6, wavelength=(120.0 * s, 300.0 * s))
    organelle_field = _smooth_noise(rng, shape, (1.2, 5.0 * s, 5.0 * s))
    organelles = organelle_field > 2.3

    axis = np.arange(size, dtype=np.float64)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    points = np.stack([yy.ravel(), xx.ravel(), np.zeros(yy.size)], axis=1)
    gy = (yy - size / 2) / size
    gx = (xx - size / 2) / size
    tilt = rng.normal(0.0, 0.12, size=2)
    drift = rng.normal(0.0, 0.03, size=2)

    volume = np.empty(shape, dtype=np.uint8)
    labels = np.empty(shape, dtype=np.uint8)
    for z in range(n_slices):
        points[:, 2] = z * z_step
        dist, idx = tree.query(points, k=2, workers=-1)
        c1, c2 = seeds[idx[:, 0]], seeds[idx[:, 1]]
        gap = np.hypot(c2[:, 0] - c1[:, 0], c2[:, 1] - c1[:, 1])
        to_boundary = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * np.maximum(gap, 1e-9))
        thickness = 7.0 * s * (1.0 + 0.6 * _wave_field(waves, axis, axis, z * z_step))
        membrane = to_boundary.reshape(size, size) < thickness / 2.0
        labels[z] = np.where(membrane, 0, 255).astype(np.uint8)

        fine = _smooth_noise(rng, (size, size), (1.5 * s + 0.5,) * 2)
        coarse = _smooth_noise(rng, (size, size), (6.0 * s + 1.0,) * 2)
        image = 168.0 + cell_level[idx[:, 0]].reshape(size, size) + 9.0 * fine + 7.0 * coarse
        image -= 70.0 * ndi.gaussian_filter(organelles[z].astype(np.float64), 1.0 * s + 0.3)
        image -= 115.0 * ndi.gaussian_filter(membrane.astype(np.float64), 1.2 * s + 0.3)
        light = 1.0 + (tilt[0] + z * drift[0]) * gy + (tilt[1] + z * drift[1]) * gx
        image = image * light + rng.normal(0.0, 9.0, size=(size, size))
        volume[z] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return volume, labels


def _plane_waves(
    rng: np.random.Generator, n: int, wavelength: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 3-D wave vectors (|k| = 2 pi / wavelength, uniform in the given range)
    and phases, for :func:`_wave_field`."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2.0 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return k, rng.uniform(0.0, 2.0 * np.pi, size=n)


def _wave_field(
    waves: tuple[np.ndarray, np.ndarray], y: np.ndarray, x: np.ndarray, depth: float
) -> np.ndarray:
    """Smooth (len(y), len(x)) field in [-1, 1]: mean over the waves of
    ``cos(ky y + kx x + kz depth + phase)``, evaluated separably as
    ``cos(a) cos(b) - sin(a) sin(b)`` with ``a = ky y + kz depth + phase``, ``b = kx x``."""
    k, phase = waves
    out = np.zeros((y.size, x.size))
    for (ky, kx, kz), ph in zip(k, phase, strict=True):
        a = ky * y + (kz * depth + ph)
        b = kx * x
        out += np.outer(np.cos(a), np.cos(b)) - np.outer(np.sin(a), np.sin(b))
    return out / len(phase)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-12)


# --------------------------------------------------------------------------- split helpers


def parse_index_list(text: str) -> list[int]:
    """Parse ``"24-29"``, ``"0,5,10"`` or a mix (``"0-2,10"``) into a sorted list of unique ints.

    Ranges are inclusive. Raises :class:`ConfigError` on malformed text or a reversed range.
    """
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a_text, b_text = part.split("-", 1)
                a, b = int(a_text), int(b_text)
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ConfigError(
                f"cannot read slice list {text!r} at {part!r}; write e.g. '24-29' or '0,5,10'"
            ) from None
    return sorted(out)


def default_val_slices(n_slices: int) -> list[int]:
    """The last ``max(1, round(0.2 * n))`` slice indices (24-29 for the 30 ISBI slices)."""
    n_val = max(1, round(DEFAULT_VAL_FRACTION * n_slices))
    return list(range(n_slices - n_val, n_slices))


def _check_val(val: Sequence[int], n: int) -> list[int]:
    chosen = sorted(set(int(v) for v in val))
    bad = [v for v in chosen if not 0 <= v < n]
    if bad:
        raise ConfigError(f"validation slices {bad} are outside 0-{n - 1} (the stack has {n} slices)")
    if not chosen:
        raise ConfigError("the validation slice list is empty; give at least one slice")
    if len(chosen) == n:
        raise ConfigError(f"all {n} slices are validation slices; leave some for training")
    return chosen


# --------------------------------------------------------------------------- per-slice ops


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a uint8 image and a 0/1 mask to ``size x size``.

    Image: linear interpolation with anti-aliasing (gaussian pre-filter when shrinking), then
    rounded and clipped back to uint8. Mask: nearest neighbour (order 0), values stay 0/1.
    """
    shape = (int(size), int(size))
    if image.shape == shape:
        return image, mask
    img = sktf.resize(
        image.astype(np.float64), shape, order=1, anti_aliasing=True, preserve_range=True
    )
    msk = sktf.resize(mask.astype(np.float64), shape, order=0, anti_aliasing=False, preserve_range=True)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), (msk > 0.5).astype(np.uint8)


def max_rotation(size: tuple[int, int], crop: tuple[int, int]) -> float:
    """Largest rotation (degrees, at most :data:`MAX_ROTATION_DEG`) keeping the crop inside.

    A centred ``h x w`` window rotated by ``t`` spans ``h cos t + w sin t`` rows; requiring
    that to fit in both slice dimensions gives the bound. 0 when the crop fills the slice.
    """
    h, w = size
    ch, cw = crop
    best = 0.0
    for step in range(int(MAX_ROTATION_DEG * 10), 0, -1):
        t = math.radians(step / 10)
        c, s = math.cos(t), math.sin(t)
        if ch * c + cw * s <= h and cw * c + ch * s <= w:
            best = step / 10
            break
    return best


def augment_pair(
    image: np.ndarray, mask: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One random augmentation of a (pre-crop) pair, then the centre crop to ``crop``.

    Draws, in order: a rotation angle uniform in +-:func:`max_rotation` degrees (image linear,
    mask nearest, about the centre), a quarter-turn count k (0-3; 0 or 2 for a non-square
    slice), and a left-right flip with probability 1/2. Mask values stay 0/1.
    """
    limit = max_rotation(image.shape, crop)
    angle = float(rng.uniform(-limit, limit)) if limit > 0 else 0.0
    k = int(rng.integers(0, 4)) if image.shape[0] == image.shape[1] else 2 * int(rng.integers(0, 2))
    flip = bool(rng.integers(0, 2))
    img, msk = image, mask
    if angle:
        img = sktf.rotate(img.astype(np.float64), angle, order=1, mode="reflect", preserve_range=True)
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        msk = sktf.rotate(msk.astype(np.float64), angle, order=0, mode="reflect", preserve_range=True)
        msk = (msk > 0.5).astype(np.uint8)
    img, msk = np.rot90(img, k), np.rot90(msk, k)
    if flip:
        img, msk = img[:, ::-1], msk[:, ::-1]
    return center_crop_or_pad(np.ascontiguousarray(img), crop), center_crop_or_pad(
        np.ascontiguousarray(msk), crop
    )


#: Where prepared EM-style data came from (``prepare.json`` ``origin``): the public ISBI 2012
#: release, the synthetic stand-in, or anybody's own data.
ORIGINS = ("isbi2012", "synthetic", "user")

#: The name of the ISBI 2012 release, used only for it.
ISBI_NAME = "ISBI 2012 EM segmentation"
SYNTHETIC_NAME = "synthetic EM stand-in"


def is_isbi_release(path: str | Path, volume: np.ndarray) -> bool:
    """Whether a stack read from ``path`` looks like the ISBI 2012 training release:
    ``train-volume.tif`` of 30 uint8 slices of 512 x 512."""
    return Path(path).name == "train-volume.tif" and volume.dtype == np.uint8 and volume.shape == (30, 512, 512)


def default_name(origin: str, source: str | Path) -> str:
    """The data set's name when ``--name`` is not given: the ISBI or synthetic name, else the
    source's file stem (a folder called ``images`` gives its parent's name)."""
    if origin == "isbi2012":
        return ISBI_NAME
    if origin == "synthetic":
        return SYNTHETIC_NAME
    path = Path(source)
    if path.name.lower() in ("images", "image", "imgs"):
        path = path.parent
    stem = path.name.split(".")[0]
    return stem if stem and not stem.startswith("<") else "user data"


def label_hint(origin: str) -> str:
    """What binary labels look like, in the words of the data's origin."""
    if origin == "isbi2012":
        return "labels must hold only 0 (membrane) and 255 (cell interior), or 0 and 1"
    return ("labels must hold only 0 (background) and 255 (foreground), or 0 and 1; for instance labels "
            "(one value per object) pass --binarize to take every label > 0 as foreground")


def _binary_labels(labels: np.ndarray, source: str, origin: str = "user") -> np.ndarray:
    return to_binary_mask(labels, source, label_hint(origin))


def _as_uint8(volume: np.ndarray) -> np.ndarray:
    """``volume`` as uint8: unchanged when it is uint8, else min-max scaled over its own values."""
    return to_uint8(volume, "per-file", None)


# --------------------------------------------------------------------------- intensities

#: ``--intensity`` of the preparation: ``auto`` records one range for the whole data set
#: (8-bit data is used as it is), ``per-file`` scales every non-8-bit file by its own min..max.
INTENSITY_OPTIONS = ("auto", "per-file")

#: The recorded scalings (``prepare.json`` ``intensity_scaling``, the checkpoint's
#: ``input_transform`` record): ``uint8`` value / 255; ``range`` one ``[lo, hi]`` for every
#: file; ``per-file`` each non-uint8 file's own min..max (uint8 files unchanged).
INTENSITY_SCALINGS = ("uint8", "range", "per-file")


def choose_intensity(arrays: Sequence[np.ndarray], option: str = "auto",
                     value_range: Sequence[float] | None = None) -> dict[str, Any]:
    """How a preparation scales the grey levels of ``arrays`` (every image or stack it reads).

    Returns the ``prepare.json`` fields ``intensity_scaling`` (one of
    :data:`INTENSITY_SCALINGS`), ``intensity_range`` (``[lo, hi]``, or None for ``per-file``)
    and ``intensity_dtypes`` (the stored pixel types met). ``value_range`` (``--intensity-range``)
    is used for every file; else ``option`` ``auto`` gives ``uint8`` when every array is uint8
    and otherwise ``range`` over the min..max of all arrays together (so a file's grey levels
    mean the same whatever else is in it); ``per-file`` keeps each file's own min..max.
    """
    if option not in INTENSITY_OPTIONS:
        raise ConfigError(f"--intensity {option!r}: expected one of {', '.join(INTENSITY_OPTIONS)}")
    dtypes = sorted({str(np.asarray(a).dtype) for a in arrays})
    if value_range is not None:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not hi > lo:
            raise ConfigError(f"--intensity-range {lo:g} {hi:g}: the upper bound must be above the lower one")
        if option == "per-file":
            raise ConfigError("--intensity-range sets one range for every file; drop --intensity per-file")
        return {"intensity_scaling": "range", "intensity_range": [lo, hi], "intensity_dtypes": dtypes}
    if dtypes == ["uint8"]:
        return {"intensity_scaling": "uint8", "intensity_range": [0.0, 255.0], "intensity_dtypes": dtypes}
    if option == "per-file":
        return {"intensity_scaling": "per-file", "intensity_range": None, "intensity_dtypes": dtypes}
    lo = min(float(np.min(a)) for a in arrays)
    hi = max(float(np.max(a)) for a in arrays)
    return {"intensity_scaling": "range", "intensity_range": [lo, hi], "intensity_dtypes": dtypes}


def describe_intensity(info: Mapping[str, Any]) -> str:
    """One line for the preparation's output: which scaling it applied and what predict will do."""
    scaling, value_range = info.get("intensity_scaling"), info.get("intensity_range")
    dtypes = ", ".join(info.get("intensity_dtypes") or []) or "?"
    if scaling == "uint8":
        return "intensity: 8-bit images used as they are (value / 255)"
    if scaling == "range":
        lo, hi = value_range
        return (f"intensity: {dtypes} grey levels scaled from {lo:g}..{hi:g} to 0..255 for every file "
                "(recorded in prepare.json; predict applies the same range)")
    return (f"intensity: each {dtypes} file scaled by its own min..max to 0..255 (--intensity per-file; "
            "predict does the same per file)")


def _write_split(
    root: Path,
    split: str,
    name: str,
    image: np.ndarray,
    mask: np.ndarray,
    crop: tuple[int, int] | None,
    copies: int,
    rng: np.random.Generator,
    stats: dict[str, list[int]],
) -> None:
    items = [(name, _crop(image, crop), _crop(mask, crop))]
    for j in range(1, copies + 1):
        target = crop if crop is not None else image.shape
        aug_image, aug_mask = augment_pair(image, mask, target, rng)
        items.append((f"{name}_aug{j}", aug_image, aug_mask))
    for item_name, img, msk in items:
        write_pair(root, split, item_name, img, msk)
        stats[split][0] += int(msk.sum())
        stats[split][1] += int(msk.size)
        stats[split][2] += 1


def _crop(array: np.ndarray, crop: tuple[int, int] | None) -> np.ndarray:
    return array if crop is None else center_crop_or_pad(array, crop)


def _summary(stats: dict[str, list[int]]) -> tuple[dict[str, int], dict[str, float]]:
    counts = {k: v[2] for k, v in stats.items()}
    fractions = {k: (round(v[0] / v[1], 4) if v[1] else 0.0) for k, v in stats.items()}
    return counts, fractions


# --------------------------------------------------------------------------- preparation


def prepare_em(
    volume: np.ndarray,
    labels: np.ndarray,
    out_dir: str | Path,
    val_slices: Iterable[int] | None = None,
    resize: int | None = 256,
    crop: int | None = 200,
    augment_copies: int = 0,
    seed: int = 0,
    source: Mapping[str, str] | None = None,
    overwrite: bool = False,
    intensity: str = "auto",
    intensity_range: Sequence[float] | None = None,
    name: str | None = None,
    origin: str = "user",
    binarize: bool = False,
) -> dict[str, Any]:
    """Turn an EM stack and its labels into the PNG-pair folder ``out_dir``; return the manifest.

    Each slice is resized to ``resize x resize`` (:func:`resize_pair`; ``None`` keeps the
    size), then centre-cropped to ``crop x crop`` (``None``: no crop). Labels must be binary
    ({0, 255} or {0, 1}); mask = label != 0, so the positive class is the label-255 region
    (cell interior). A non-uint8 volume is scaled to 0..255 as :func:`choose_intensity` decides
    from ``intensity`` and ``intensity_range`` (by default over the stack's min..max; the
    manifest records the scaling and range, which predict applies). Slices listed in
    ``val_slices`` (default :func:`default_val_slices`) go to ``val``, the others to
    ``train``, named ``slice_00``...; each training slice also gets ``augment_copies``
    augmented copies ``slice_00_aug1``... (:func:`augment_pair`, seeded by ``seed``).
    The folder is written through :func:`unet.fileio.atomic_directory` and holds
    ``prepare.json`` with the options, the split and the foreground fraction per split. A
    non-empty ``out_dir`` is refused unless it holds a previous preparation and ``overwrite``
    is true; then only the previous preparation's files are replaced. ``name`` (default
    :func:`default_name`) and ``origin`` (one of :data:`ORIGINS`) are recorded in the manifest
    and name the data in messages and results; ``binarize`` takes every label > 0 as
    foreground (instance labels) instead of requiring binary labels.
    Raises :class:`DataError` for shape mismatches or non-binary labels and
    :class:`ConfigError` for a bad split or crop larger than the resized slice.
    """
    volume = np.asarray(volume)
    labels = np.asarray(labels)
    src = dict(source or {"volume": "<array>", "labels": "<array>"})
    if volume.ndim != 3:
        raise DataError(f"volume {src.get('volume')} has shape {volume.shape}; expected (N, H, W)")
    if labels.shape != volume.shape:
        raise DataError(
            f"labels {src.get('labels')} have shape {labels.shape} but the volume "
            f"{src.get('volume')} has shape {volume.shape}; they must match slice for slice"
        )
    if augment_copies < 0:
        raise ConfigError(f"augment_copies must be >= 0, got {augment_copies}")
    n, h, w = volume.shape
    val = _check_val(default_val_slices(n) if val_slices is None else list(val_slices), n)
    val_set = set(val)
    train = [i for i in range(n) if i not in val_set]
    size = (h, w) if resize is None else (int(resize), int(resize))
    crop_hw = None if crop is None else (int(crop), int(crop))
    if crop_hw is not None and (crop_hw[0] > size[0] or crop_hw[1] > size[1]):
        raise ConfigError(f"crop {crop} is larger than the resized slice {size}; lower the crop")
    scaling = choose_intensity([volume], intensity, intensity_range)
    images = to_uint8(volume, scaling["intensity_scaling"], scaling["intensity_range"])
    masks = labels_to_mask(labels, f"labels {src.get('labels')}", binarize, origin)

    rng = np.random.default_rng(seed)
    width = max(2, len(str(n - 1)))
    stats: dict[str, list[int]] = {"train": [0, 0, 0], "val": [0, 0, 0]}
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for i in range(n):
            image, mask = images[i], masks[i]
            if resize is not None:
                image, mask = resize_pair(image, mask, int(resize))
            split = "val" if i in val_set else "train"
            copies = augment_copies if split == "train" else 0
            _write_split(tmp, split, f"slice_{i:0{width}d}", image, mask, crop_hw, copies, rng, stats)
        counts, fractions = _summary(stats)
        name = name or default_name(origin, src.get("volume", "stack"))
        info: dict[str, Any] = {
            "dataset": name,
            "name": name,
            "origin": origin,
            "source": src,
            "input_shape": [n, h, w],
            "resize": resize,
            "crop": crop,
            "image_size": list(crop_hw or size),
            "val_slices": val,
            "train_slices": train,
            "augment_copies": augment_copies,
            "seed": seed,
            "pairs": counts,
            "foreground_fraction": fractions,
            "positive_class": ("mask 255 = label > 0 (--binarize)" if binarize
                               else "mask 255 = label 255 = cell interior (membranes are 0)" if origin == "isbi2012"
                               else "mask 255 = label 255 (or 1) = foreground"),
            "binarize": binarize,
            **scaling,
        }
        write_manifest(tmp, info)
    return info


#: Image and mask files a folder of pairs may hold (any case of the suffix).
PAIR_SUFFIXES = (".png", ".tif", ".tiff")


def list_images(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for every PNG or TIFF directly in ``folder`` (hidden files skipped).
    Raises :class:`DataError` when two files share a stem (``a.png`` and ``a.tif``)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in PAIR_SUFFIXES:
            continue
        if path.stem in found:
            raise DataError(f"{found[path.stem].name} and {path.name} in {folder} share the name {path.stem!r}; "
                            "keep one of them")
        found[path.stem] = path
    return found


def read_plane(path: Path, what: str) -> tuple[np.ndarray, list[str]]:
    """One 2-D image (PNG or single-page TIFF, any bit depth; colour turned grey with a
    warning) as stored, with its warnings. A multi-page TIFF is a :class:`DataError`."""
    from unet.predict.io import read_image

    image = read_image(path)
    if image.pixels.shape[0] != 1:
        raise DataError(f"{what} {path} is a stack of {image.pixels.shape[0]} pages; a folder of pairs holds 2-D "
                        "images (give stacks with --volume and --labels)")
    return image.pixels[0], image.warnings


def labels_to_mask(labels: np.ndarray, source: str, binarize: bool, origin: str = "user") -> np.ndarray:
    """Labels -> uint8 0/1 mask: ``labels > 0`` with ``binarize`` (instance labels), else the
    binary check of :func:`unet.data.transforms.to_binary_mask` (0/255 or 0/1)."""
    if binarize:
        return (np.asarray(labels) > 0).astype(np.uint8)
    return _binary_labels(labels, source, origin)


def prepare_em_from_pairs(
    images_dir: str | Path,
    masks_dir: str | Path,
    out_dir: str | Path,
    val_names: Sequence[str] | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    crop: int | None = 200,
    resize: int | None = None,
    augment_copies: int = 0,
    seed: int = 0,
    overwrite: bool = False,
    intensity: str = "auto",
    intensity_range: Sequence[float] | None = None,
    binarize: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Turn a folder of 2-D images and a folder of masks (PNG or TIFF, paired by file stem)
    into ``out_dir``; return the manifest.

    Images may have any bit depth (scaled to 0..255 by :func:`choose_intensity` over all the
    images, or per file, as ``intensity`` and ``intensity_range`` say; colour is turned grey
    with a warning listed in the manifest's ``warnings``); masks must be binary (0/255 or
    0/1) unless ``binarize`` takes every label > 0 as foreground (instance labels); an image
    and its mask must have one size. Validation set: the stems in ``val_names`` when given,
    else the last ``max(1, round(val_fraction * n))`` stems in sorted order (serial sections
    named in order stay contiguous). Then, per pair: optional resize to ``resize x resize``,
    centre crop to ``crop x crop`` (an image smaller than the crop is an error),
    ``augment_copies`` augmented copies of training pairs, written like :func:`prepare_em`
    (``overwrite`` too) under their own stems. ``name`` (default: the images folder's name,
    its parent's when it is called ``images``) names the data set.
    """
    from unet.data.pairs import pair_files

    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for folder, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist")
    image_files, mask_files = list_images(images_dir), list_images(masks_dir)
    if not image_files:
        raise DataError(f"images folder {images_dir} holds no PNG or TIFF files")
    if not mask_files:
        raise DataError(f"masks folder {masks_dir} holds no PNG or TIFF files")
    pairs = pair_files(image_files, mask_files, images_dir, masks_dir)
    names = [p[0] for p in pairs]
    if len(names) < 2:
        raise DataError(f"{images_dir} holds only {len(names)} pair; need at least 2 to split (cut a large image "
                        "into tiles, one file each)")
    if val_names is not None:
        unknown = sorted(set(val_names) - set(names))
        if unknown:
            raise ConfigError(f"validation names {unknown} are not among the pairs in {images_dir}")
        val = sorted(set(val_names))
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        n_val = min(len(names) - 1, max(1, round(val_fraction * len(names))))
        val = names[-n_val:]
    if not val or len(val) == len(names):
        raise ConfigError("the validation set must hold at least one pair and leave one for training")
    if augment_copies < 0:
        raise ConfigError(f"augment_copies must be >= 0, got {augment_copies}")
    crop_hw = None if crop is None else (int(crop), int(crop))

    warnings: list[str] = []
    raw: list[tuple[str, Path, np.ndarray, np.ndarray]] = []
    for stem, image_path, mask_path in pairs:
        image, image_warnings = read_plane(image_path, "image")
        labels, mask_warnings = read_plane(mask_path, "mask")
        warnings += image_warnings + mask_warnings
        if image.shape != labels.shape:
            raise DataError(f"image {image_path} has size {image.shape} but its mask {mask_path} has size "
                            f"{labels.shape}; an image and its mask must have the same height and width")
        raw.append((stem, image_path, image, labels_to_mask(labels, f"mask {mask_path}", binarize)))
    scaling = choose_intensity([image for _, _, image, _ in raw], intensity, intensity_range)

    rng = np.random.default_rng(seed)
    stats: dict[str, list[int]] = {"train": [0, 0, 0], "val": [0, 0, 0]}
    val_set = set(val)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for stem, image_path, pixels, mask in raw:
            image = to_uint8(pixels, scaling["intensity_scaling"], scaling["intensity_range"])
            if resize is not None:
                image, mask = resize_pair(image, mask, int(resize))
            if crop_hw is not None and (image.shape[0] < crop_hw[0] or image.shape[1] < crop_hw[1]):
                raise DataError(
                    f"image {image_path} has size {image.shape} (after resizing), smaller than "
                    f"the crop {crop_hw}; lower --crop or use larger images"
                )
            split = "val" if stem in val_set else "train"
            copies = augment_copies if split == "train" else 0
            _write_split(tmp, split, stem, image, mask, crop_hw, copies, rng, stats)
        counts, fractions = _summary(stats)
        name = name or default_name("user", images_dir)
        sizes = sorted({tuple(int(v) for v in pixels.shape) for _, _, pixels, _ in raw})
        info: dict[str, Any] = {
            "dataset": name,
            "name": name,
            "origin": "user",
            "source": {"images": str(images_dir), "masks": str(masks_dir)},
            "input_sizes": [list(size) for size in sizes],
            "resize": resize,
            "crop": crop,
            "val_names": val,
            "train_names": [n for n in names if n not in val_set],
            "augment_copies": augment_copies,
            "seed": seed,
            "pairs": counts,
            "foreground_fraction": fractions,
            "positive_class": "mask 255 = label > 0 (--binarize)" if binarize else "mask 255 = label 255 (or 1)",
            "binarize": binarize,
            "warnings": warnings,
            **scaling,
        }
        if len(sizes) == 1:  # one input size: predict can resize new images by the same factor
            info["input_shape"] = [len(raw), *sizes[0]]
        write_manifest(tmp, info)
    return info
