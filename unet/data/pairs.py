"""Reader of prepared PNG image/mask pairs (the EM and NIH on-disk format).

The layout is described in :mod:`unet.prep.pngpairs`: ``root/split/images/<name>.png`` and
``root/split/masks/<name>.png``, paired by file name. Every pair is read and validated when the
dataset is built, so that a broken file stops the run before training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from unet.data.transforms import center_crop_or_pad, to_binary_mask
from unet.data.transforms import normalize as apply_normalize
from unet.errors import DataError, MissingDataError
from unet.progress import bar_disable
from unet.transforms import from_uint8

#: Above this many pairs the reader shows a progress bar while loading.
PROGRESS_MIN_FILES = 200

NORMALIZE_MODES = ("instance", "none")



def list_pngs(folder: Path) -> dict[str, Path]:
    """Map file stem -> path for every ``*.png`` (any case of the suffix) directly in ``folder``.

    Hidden files (names starting with ``.``) are skipped. Returns an empty dict for an empty
    folder; the caller decides whether that is an error.
    """
    return {
        p.stem: p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")
    }


def _preview(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def pair_files(
    images: dict[str, Path], masks: dict[str, Path], images_dir: Path, masks_dir: Path
) -> list[tuple[str, Path, Path]]:
    """Pair image and mask files by stem; return ``[(stem, image, mask)]`` sorted by stem.

    Raises :class:`DataError` naming the unmatched files when an image has no mask or a mask
    has no image.
    """
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images:
        files = [images[n].name for n in lonely_images]
        raise DataError(
            f"{len(files)} image(s) in {images_dir} have no mask of the same name in "
            f"{masks_dir}: {_preview(files)}; add the mask(s) or remove the image(s)"
        )
    if lonely_masks:
        files = [masks[n].name for n in lonely_masks]
        raise DataError(
            f"{len(files)} mask(s) in {masks_dir} have no image of the same name in "
            f"{images_dir}: {_preview(files)}; add the image(s) or remove the mask(s)"
        )
    return [(name, images[name], masks[name]) for name in sorted(images)]


def _read_any(path: Path) -> np.ndarray:
    try:
        return np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot read {path} ({reason}); the file is corrupt or not a PNG: "
            "re-export it or re-run the preparation command"
        ) from exc


def _to_grey(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    if array.ndim == 2:
        return array
    if array.ndim == 3 and array.shape[2] == 2:
        return array[..., 0]
    if array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0]
        raise DataError(
            f"{what} {path} is a colour (RGB) image whose channels differ; "
            "convert it to 8-bit greyscale"
        )
    raise DataError(
        f"{what} {path} has array shape {array.shape}; expected a 2-D greyscale image"
    )


def read_grey_png(path: str | Path) -> np.ndarray:
    """Read an 8-bit greyscale PNG as a uint8 (H, W) array.

    RGB/RGBA files are accepted only when the three colour channels are equal (the alpha
    channel is ignored); 1-bit files map to 0/255. Raises :class:`DataError` for an unreadable
    file, a colour image, or a bit depth other than 1 or 8.
    """
    path = Path(path)
    array = _to_grey(_read_any(path), path, "image")
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        raise DataError(
            f"image {path} has pixel type {array.dtype}; save it as an 8-bit greyscale PNG"
        )
    return array


def mask_to_binary(array: np.ndarray, path: str | Path) -> np.ndarray:
    """Return a uint8 (H, W) mask holding 1 for foreground and 0 for background.

    Accepted value sets: subsets of {0, 1} or of {0, 255} (so an all-background or
    all-foreground slice is fine). Anything else, a mask of grey 128 included, raises
    :class:`DataError` listing the values found.
    """
    return to_binary_mask(array, f"mask {path}", "masks must hold only 0 and 255 (or 0 and 1)")


def read_mask_png(path: str | Path) -> np.ndarray:
    """Read a binary mask PNG as uint8 (H, W) with values 0/1 (see :func:`mask_to_binary`)."""
    path = Path(path)
    return mask_to_binary(_to_grey(_read_any(path), path, "mask"), path)


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one image (uint8 0..255) and its mask (uint8 0/1); both must have the same shape."""
    image = read_grey_png(image_path)
    mask = read_mask_png(mask_path)
    if image.shape != mask.shape:
        raise DataError(
            f"image {image_path} has size {image.shape} but its mask {mask_path} has size "
            f"{mask.shape}; an image and its mask must have the same height and width"
        )
    return image, mask


def _require_folder(folder: Path, hint: str) -> None:
    if not folder.is_dir():
        raise MissingDataError(f"dataset folder {folder} does not exist{hint}")


class PngPairDataset(Dataset):
    """Every ``(image, mask)`` PNG pair of one split, held in memory.

    ``__getitem__(i)`` returns two float32 tensors of shape (1, H, W):
    the image ``normalize(crop(u8) / 255, mode)`` (``"none"``: values in [0, 1];
    ``"instance"``: ``(x - mean) / std`` per image, zeros for a constant image) and the mask
    with values 0.0 / 1.0. With ``crop_size = (H, W)`` both are centre-cropped (or padded
    with 0) to that size; with ``None`` all images of the split must share one size.
    Pairs are sorted by file name; :meth:`sample_name` gives the stem.

    Raises :class:`MissingDataError` when ``root``, ``root/split``, or its ``images`` or
    ``masks`` folder is missing, or the split holds no PNG files; :class:`DataError` for any
    invalid file (unpaired, unreadable, colour, non-binary mask, size mismatch).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        crop_size: tuple[int, int] | None,
        normalize: str,
    ) -> None:
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
        if crop_size is not None:
            if len(crop_size) != 2 or any(int(s) < 1 for s in crop_size):
                raise ValueError(f"crop_size must be two positive ints, got {crop_size!r}")
            crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.root = Path(root)
        self.split = split
        self.crop_size = crop_size
        self.normalize = normalize

        _require_folder(self.root, "")
        if not any(self.root.iterdir()):
            raise MissingDataError(f"dataset folder {self.root} is empty")
        split_dir = self.root / split
        _require_folder(split_dir, f" (no '{split}' split in {self.root})")
        images_dir, masks_dir = split_dir / "images", split_dir / "masks"
        _require_folder(images_dir, f" (expected the {split} images there)")
        _require_folder(masks_dir, f" (expected the {split} masks there)")
        images, masks = list_pngs(images_dir), list_pngs(masks_dir)
        if not images and not masks:
            raise MissingDataError(f"dataset folders {images_dir} and {masks_dir} hold no PNG files")
        pairs = pair_files(images, masks, images_dir, masks_dir)

        self._names: list[str] = []
        self._images: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        first: tuple[Path, tuple[int, ...]] | None = None
        bar = tqdm(
            pairs,
            desc=f"reading {split} pairs",
            unit="pair",
            disable=bar_disable(2 * len(pairs) <= PROGRESS_MIN_FILES),
            leave=False,
        )
        for name, image_path, mask_path in bar:
            image, mask = read_pair(image_path, mask_path)
            if crop_size is None:
                if first is None:
                    first = (image_path, image.shape)
                elif image.shape != first[1]:
                    raise DataError(
                        f"image {image_path} has size {image.shape} but {first[0]} has size "
                        f"{first[1]}; images of one split must share one size unless "
                        "crop_size is set"
                    )
            else:
                image = center_crop_or_pad(image, crop_size, fill=0)
                mask = center_crop_or_pad(mask, crop_size, fill=0)
            self._names.append(name)
            self._images.append(image)
            self._masks.append(mask)

    def __len__(self) -> int:
        """Number of pairs in the split."""
        return len(self._names)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(image, mask)`` float32 tensors of shape (1, H, W) (see the class doc)."""
        image = apply_normalize(from_uint8(self._images[index]), self.normalize)
        mask = self._masks[index].astype(np.float32)
        return torch.from_numpy(image[None].copy()), torch.from_numpy(mask[None].copy())

    def sample_name(self, index: int) -> str:
        """File stem of pair ``index`` (e.g. ``"slice_03"``)."""
        return self._names[index]

    @property
    def names(self) -> list[str]:
        """File stems of all pairs, in dataset order (sorted by name)."""
        return list(self._names)

    def foreground_fraction(self) -> float:
        """Fraction of mask pixels (after cropping) that are foreground, over the whole split."""
        total = sum(m.size for m in self._masks)
        return float(sum(int(m.sum()) for m in self._masks) / total) if total else 0.0
