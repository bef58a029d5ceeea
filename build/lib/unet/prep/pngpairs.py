"""The on-disk format the EM and NIH trainers read: folders of PNG image/mask pairs.

Layout written by the preparation commands (and accepted from users directly)::

    DIR/train/images/<name>.png   uint8 grey image
    DIR/train/masks/<name>.png    uint8 mask, 0 = background, 255 = foreground
    DIR/val/images/<name>.png
    DIR/val/masks/<name>.png
    DIR/prepare.json              how the folder was made (source, split, options)

An image and its mask share the file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from skimage import io as skio

SPLITS = ("train", "val")


def write_pair(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    """Write one ``(image, mask)`` pair as ``root/split/{images,masks}/name.png``.

    ``image`` must be uint8 (H, W); ``mask`` any (H, W) array, stored as 255 where it is
    non-zero and 0 elsewhere.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"image must be a 2-D uint8 array, got {image.dtype} {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    for sub, array in (("images", image), ("masks", np.where(mask != 0, 255, 0).astype(np.uint8))):
        folder = root / split / sub
        folder.mkdir(parents=True, exist_ok=True)
        skio.imsave(folder / f"{name}.png", array, check_contrast=False)


def write_manifest(root: Path, info: dict[str, Any]) -> None:
    """Write ``root/prepare.json`` describing how the prepared folder was made."""
    (root / "prepare.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
