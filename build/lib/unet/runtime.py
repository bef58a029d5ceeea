"""Process-wide runtime settings that make the CPU work faster without changing any value.

:func:`tune_allocator` is called first thing by the command lines (trainers, predict, export)
and by the benchmarks.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Both thresholds: 1 GiB.
HEAP_THRESHOLD_BYTES = 1 << 30
#: Set to ``0`` in the environment to leave the allocator alone.
ENV_SWITCH = "UNET_TUNE_ALLOCATOR"

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Serve large tensors from glibc's heap instead of fresh ``mmap`` pages; True if applied.

    glibc hands every allocation above ``M_MMAP_THRESHOLD`` (dynamic, at most 32 MiB) to
    ``mmap`` and gives it back with ``munmap`` on free, so every new activation of that size
    (a 5x64x200x200 float32 tensor is 51 MB) is page-faulted and zero-filled by the kernel
    before anything is computed: a BatchNorm forward of that size, one thread, 32 ms against
    4.8 ms from the heap. This sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to
    :data:`HEAP_THRESHOLD_BYTES` (1 GiB) with ``mallopt``, so such blocks come from the heap
    and stay there for reuse when freed.

    Values are unchanged (only where memory comes from). The cost: freed memory below 1 GiB is
    kept by the process instead of returned to the system, so the resident size stays near
    its peak. Only on Linux with glibc (elsewhere, or with ``UNET_TUNE_ALLOCATOR=0`` in the
    environment, it does nothing and returns False); calling it again returns the first
    answer without repeating the calls.
    """
    global _tuned
    if _tuned is None:
        _tuned = _apply()
    return _tuned


def _apply() -> bool:
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a refused value; the trim threshold first, so a refused
    # mmap threshold leaves the default (dynamic) behaviour in place
    return bool(mallopt(_M_TRIM_THRESHOLD, HEAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD_BYTES))
