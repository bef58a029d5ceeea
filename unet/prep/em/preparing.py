"""EM preparation: TIFF stacks (:func:`prepare_em`) or a folder of PNG/TIFF pairs
(:func:`prepare_em_from_pairs`) in, the PNG-pair folder out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet.errors import ConfigError, DataError
from unet.fileio import atomic_directory
from unet.prep.pngpairs import write_manifest
from unet.transforms import to_uint8

from .slices import (
    DEFAULT_VAL_FRACTION,
    binary_labels,
    check_val_slices,
    choose_intensity,
    default_name,
    default_val_slices,
    resize_pair,
    split_summary,
    write_split,
)


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
    val = check_val_slices(default_val_slices(n) if val_slices is None else list(val_slices), n)
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
            write_split(tmp, split, f"slice_{i:0{width}d}", image, mask, crop_hw, copies, rng, stats)
        counts, fractions = split_summary(stats)
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
    from unet.imageio import read_image

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
    return binary_labels(labels, source, origin)


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
            write_split(tmp, split, stem, image, mask, crop_hw, copies, rng, stats)
        counts, fractions = split_summary(stats)
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
