"""Write and compile an hls4ml project for its C simulation (g++ only, no vendor tool)."""

from __future__ import annotations

import os
import time
from pathlib import Path

#: g++ optimisation of the C simulation library. hls4ml's default -O3 (and -O1) take many minutes on the
#: U-Net's unrolled templates; the arithmetic (ap_int) is exact at any level.
CFLAGS_ENV = "UNET_HLS_CFLAGS"
DEFAULT_CFLAGS = "-O0 -fPIC"


def write_project(hls_model) -> Path:
    """Write the project (``firmware/*.cpp`` and the rest) and set its C simulation's g++ flags."""
    hls_model.write()
    out = Path(hls_model.config.get_output_dir())
    script = out / "build_lib.sh"
    flags = os.environ.get(CFLAGS_ENV, DEFAULT_CFLAGS)
    script.write_text(script.read_text().replace('CFLAGS="-O3 -fPIC"', f'CFLAGS="{flags}"'))
    return out


def compile_project(hls_model) -> float:
    """Compile the written project with g++ and load it into ``hls_model``; returns seconds."""
    start = time.perf_counter()
    hls_model._compile()  # hls4ml's compile() without its write(), which would reset build_lib.sh
    return time.perf_counter() - start
