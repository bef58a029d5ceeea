"""Checks on a NIfTI file's header before its voxels are read: the memory a file asks for must
be justified by the file itself, and its geometry must be finite.

A 101-byte ``.nii.gz`` can declare 3000 x 3000 x 500 float32 voxels (18 GB); nibabel would
allocate that before noticing the data end. :func:`check_nifti` compares the declared size
with what the file holds (an uncompressed file: its byte count; a gzip file: the data is
decompressed as a stream, in bounded blocks, and the check stops as soon as it ends early or
reaches the declared size) and with this machine's memory, and refuses NaN or infinite values
in the affine and voxel sizes, before anything is allocated. Every loader of NIfTI volumes
(predict, the NIH and GM preparations and the GM reader) calls it.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

#: Decompressed bytes read per step while streaming a gzip file.
BLOCK = 1 << 20


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None when unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def declared_bytes(img: Any) -> tuple[int, int]:
    """``(voxel data bytes, data offset)`` that ``img``'s header declares (exact Python ints)."""
    header = img.header
    count = math.prod(int(n) for n in img.shape)
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    try:
        offset = int(header.get_data_offset())
    except (AttributeError, TypeError, ValueError):
        offset = 0
    return count * itemsize, max(offset, 0)


def check_nifti(path: str | os.PathLike[str], img: Any) -> None:
    """Raise :class:`DataError` naming ``path`` unless the NIfTI image ``img`` (loaded from
    ``path`` by ``nibabel.load``, voxels not read yet) can be read safely.

    Refused: a header declaring more voxel data than the file holds (compressed files are
    streamed, never held whole), more voxels than this machine's memory could hold as
    float32 twice over, a non-finite affine, and a non-finite or non-positive voxel size.
    """
    path = Path(path)
    data_bytes, offset = declared_bytes(img)
    shape = "x".join(str(int(n)) for n in img.shape)
    count = math.prod(int(n) for n in img.shape)
    memory = physical_memory()
    if memory is not None and count * 8 > memory:
        raise DataError(f"{path} declares {shape} voxels ({count * 8 / 2**30:.1f} GiB as float32 twice over), more "
                        f"than this machine's {memory / 2**30:.1f} GiB; the header is damaged or the volume too large")
    need = offset + data_bytes
    if path.name.lower().endswith(".gz"):
        held = _gzip_length(path, need)
    else:
        try:
            held = path.stat().st_size
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if held < need:
        raise DataError(f"{path} is truncated or its header is damaged: it declares {shape} voxels "
                        f"({data_bytes:,} bytes of data from byte {offset}) but holds only {max(held - offset, 0):,} "
                        "bytes of data")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise DataError(f"{path}: its header's affine (voxel-to-world matrix) holds NaN or infinite values; "
                        "the header is damaged")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    if not all(math.isfinite(z) for z in zooms) or any(z <= 0 for z in zooms[: min(len(img.shape), 3)]):
        raise DataError(f"{path}: its header's voxel size {zooms} mm is not finite and positive; the header is "
                        "damaged")


def _gzip_length(path: Path, need: int) -> int:
    """Decompressed length of ``path``, counting no further than ``need`` bytes (streamed)."""
    held = 0
    try:
        with gzip.open(path, "rb") as handle:
            while held < need:
                block = handle.read(min(BLOCK, need - held))
                if not block:
                    break
                held += len(block)
    except EOFError:  # the compressed stream ends early: what was decompressed is all there is
        return held
    except (OSError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: the gzip data is damaged ({exc})") from None
    return held


__all__ = ["check_nifti", "declared_bytes", "physical_memory"]
