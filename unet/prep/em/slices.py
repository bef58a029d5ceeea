"""Per-slice rules of the EM preparation: the validation split, resizing, offline augmentation,
labels and intensities."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage import transform as sktf

from unet.data.transforms import center_crop_or_pad, to_binary_mask
from unet.errors import ConfigError
from unet.prep.pngpairs import write_pair
from unet.transforms import to_uint8

#: Largest random rotation (degrees) of an offline augmentation; smaller when the crop would
#: otherwise reach outside the rotated slice.
MAX_ROTATION_DEG = 10.0

#: Default fraction of the slices (the last ones) used for validation: 6 of 30.
DEFAULT_VAL_FRACTION = 0.2




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


def check_val_slices(val: Sequence[int], n: int) -> list[int]:
    chosen = sorted(set(int(v) for v in val))
    bad = [v for v in chosen if not 0 <= v < n]
    if bad:
        raise ConfigError(f"validation slices {bad} are outside 0-{n - 1} (the stack has {n} slices)")
    if not chosen:
        raise ConfigError("the validation slice list is empty; give at least one slice")
    if len(chosen) == n:
        raise ConfigError(f"all {n} slices are validation slices; leave some for training")
    return chosen




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


def binary_labels(labels: np.ndarray, source: str, origin: str = "user") -> np.ndarray:
    return to_binary_mask(labels, source, label_hint(origin))


def _as_uint8(volume: np.ndarray) -> np.ndarray:
    """``volume`` as uint8: unchanged when it is uint8, else min-max scaled over its own values."""
    return to_uint8(volume, "per-file", None)



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


def write_split(
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


def split_summary(stats: dict[str, list[int]]) -> tuple[dict[str, int], dict[str, float]]:
    counts = {k: v[2] for k, v in stats.items()}
    fractions = {k: (round(v[0] / v[1], 4) if v[1] else 0.0) for k, v in stats.items()}
    return counts, fractions


