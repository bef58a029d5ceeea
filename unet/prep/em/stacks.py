"""Multi-page TIFF stacks, the ISBI 2012 release's format: read and write."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unet.errors import DataError
from unet.fileio import atomic_path


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


