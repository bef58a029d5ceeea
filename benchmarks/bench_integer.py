#!/usr/bin/env python
"""Inference speed of the integer engine against the PyTorch float-simulated (fake-quant) forward.

For each quantization mode, the EM recipe's model (``EM_BASE/config.yaml``: base_channels 64,
channels_last, eval mode, at its initial weights: speed does not depend on training) runs a
fixed batch of 200x200 images through every engine of :data:`ENGINES`; repetitions are
interleaved (round-robin, every other round reversed) so that background load hits every
engine alike. Printed per mode and engine: images per second (wall clock and per CPU second
of this process) and the ratio to the float forward; also the convolution kernel each
integer unit ran (float32 where the bound proves it exact, else float64 / int64) and
whether the engine's codes equal the fake-quant model's on the benchmark batch.

Run from the repository root::

    python benchmarks/bench_integer.py                    # base_channels 64, batch 4, 200x200
    python benchmarks/bench_integer.py --quick            # base_channels 16, 2 repetitions
    python benchmarks/bench_integer.py --modes fixed_nearest,bnn --json out.json

Another engine (e.g. onnxruntime) is added by appending to :data:`ENGINES` a name and a
factory ``f(model) -> callable(x) -> probabilities``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unet.config import load_config  # noqa: E402
from unet.fileio import atomic_write_text  # noqa: E402
from unet.integer import IntegerUNet, code_mismatches  # noqa: E402
from unet.model import UNet, build_model  # noqa: E402

EM_BASE = REPO / "EM_BASE" / "config.yaml"

from modes import MODES as ALL_MODES  # noqa: E402

MODES = {name: ALL_MODES[name] for name in ("fixed_nearest", "fixed_pow2", "int", "bnn")}


def _float_engine(model: UNet) -> Callable:
    model.eval()

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return forward


#: Engines compared, in column order: (name, factory). The first is the reference for ratios.
ENGINES: list[tuple[str, Callable[[UNet], Callable]]] = [
    ("pytorch_float", _float_engine),
    ("integer", IntegerUNet.from_model),
]


def build(mode: str, base_channels: int) -> UNet:
    """The EM recipe's model of ``mode`` (eval mode, channels_last), seeded."""
    cfg = load_config(EM_BASE, EM_BASE, overrides=MODES[mode][1] + [f"base_channels={base_channels}"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def bench_mode(mode: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    model = build(mode, args.base_channels)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    engines = {}
    for name, factory in ENGINES:
        start = time.perf_counter()
        engines[name] = factory(model)
        log(f"  {mode}: built {name} in {time.perf_counter() - start:.2f} s")
    wall: dict[str, list[float]] = {n: [] for n in engines}
    cpu: dict[str, list[float]] = {n: [] for n in engines}
    for r in range(args.warmup + args.reps):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            engines[name](x)
            t, c = time.perf_counter() - t0, time.process_time() - c0
            if r >= args.warmup:
                wall[name].append(t)
                cpu[name].append(c)
            log(f"  {mode} round {r + 1}: {name:14s} {t:7.2f} s wall {c:7.2f} s CPU")
    ref = ENGINES[0][0]
    result: dict = {"label": MODES[mode][0], "engines": {}}
    for name in engines:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        result["engines"][name] = {
            "images_per_s": args.batch / w, "images_per_cpu_s": args.batch / c,
            "ratio_to_float": statistics.median(wall[ref]) / w, "cpu_ratio_to_float": statistics.median(cpu[ref]) / c,
        }
    integer = engines.get("integer")
    if isinstance(integer, IntegerUNet):
        result["kernels"] = integer.kernels_used()
        if not args.no_check:
            result["code_mismatches"] = sum(code_mismatches(model, integer, x).values())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="base_channels 16, 1 warm-up, 2 repetitions")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-check", action="store_true", help="skip the code comparison")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.base_channels, args.reps = 16, 2
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: unknown mode(s) {unknown}; choose from {list(MODES)}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    results = {
        "settings": {"base_channels": args.base_channels, "batch": args.batch, "size": args.size,
                     "reps": args.reps, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "loadavg_start": os.getloadavg()},
        "modes": {m: bench_mode(m, args, log) for m in modes},
    }
    results["settings"]["loadavg_end"] = os.getloadavg()
    print(f"{args.size}x{args.size}, batch {args.batch}, base_channels {args.base_channels}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':32s} {'engine':14s} {'images/s':>9s} {'vs float':>9s} {'CPU vs float':>13s}  codes equal")
    for r in results["modes"].values():
        same = r.get("code_mismatches")
        for name, e in r["engines"].items():
            check = "" if name != "integer" or same is None else str(same == 0)
            print(f"{r['label']:32s} {name:14s} {e['images_per_s']:9.3f} {e['ratio_to_float']:8.2f}x "
                  f"{e['cpu_ratio_to_float']:12.2f}x  {check}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
