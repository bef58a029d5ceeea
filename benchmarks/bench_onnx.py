#!/usr/bin/env python
"""Inference speed of the ONNX export under onnxruntime against the PyTorch fake-quant forward.

For each quantization mode, the U-Net (eval mode, ``torch.no_grad``) and its plain ONNX export
(:class:`unet.export.onnx.OnnxForward`, CPUExecutionProvider) each run the same float batch;
the repetitions of all modes and both engines are interleaved (round-robin), so background load
on a shared machine hits every measurement alike. Prints, per mode, the median images/s of each
engine (wall clock) and the ratio onnxruntime / PyTorch, and the CPU seconds per image
(``time.process_time``, less disturbed by other processes). Both engines use
``torch.get_num_threads()`` threads. Weights are at their init (speed does not depend on them).

Run from the repository root::

    python benchmarks/bench_onnx.py                 # base_channels 64, 200x200, batch 5
    python benchmarks/bench_onnx.py --quick         # base_channels 16, 1 repeat: a smoke run
    python benchmarks/bench_onnx.py --json onnx.json --modes normal,fixed_nearest

:func:`bench_engines` is the reusable part: it takes any ``name -> callable(x)`` engines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from quantizer import QuantSpec  # noqa: E402
from unet.export.onnx import OnnxForward  # noqa: E402
from unet.model import UNet, quant_specs  # noqa: E402

#: Benchmarked modes: (label, weight spec, activation spec), the EM quick-start widths.
MODES: dict[str, tuple[str, QuantSpec, QuantSpec]] = {
    "normal": ("Normal (float)", *quant_specs("Normal", 0, 0, 0, 0)),
    "fixed_nearest": ("FIXED nearest a Q6.0 / w Q0.4", *quant_specs("FIXED", 6, 0, 0, 4)),
    "fixed_saturate": ("FIXED saturate a Q6.0 / w Q0.4", *quant_specs("FIXED", 6, 0, 0, 4, "nearest", "saturate")),
    "fixed_pow2": ("FIXED pow2 a Q6.0 / w Q0.4", *quant_specs("FIXED", 6, 0, 0, 4, "pow2")),
    "int": ("INT a 8 / w 8 bits", *quant_specs("INT", 8, 0, 8, 0)),
    "bnn": ("BNN (sign)", *quant_specs("BNN", 0, 0, 0, 0)),
    "ternary": ("Ternary (TWN weights)", *quant_specs("Ternary", 0, 0, 0, 0)),
}


def bench_engines(
    engines: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, repeats: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time each engine on ``x``, interleaved, after ``warmup`` untimed calls each.

    Returns per engine ``images_per_s`` (batch size / median wall seconds of a call) and
    ``cpu_s_per_image`` (median process CPU seconds of a call / batch size).
    """
    wall: dict[str, list[float]] = {name: [] for name in engines}
    cpu: dict[str, list[float]] = {name: [] for name in engines}
    with torch.no_grad():
        for _ in range(warmup):
            for run in engines.values():
                run(x)
        for _ in range(repeats):
            for name, run in engines.items():
                c0, t0 = time.process_time(), time.perf_counter()
                run(x)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    n = x.shape[0]
    return {
        name: {"images_per_s": n / statistics.median(wall[name]), "cpu_s_per_image": statistics.median(cpu[name]) / n}
        for name in engines
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="base_channels 16, one repeat (a smoke run)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {','.join(MODES)}")
    parser.add_argument("--base-channels", type=int, default=None, help="default 64 (16 with --quick)")
    parser.add_argument("--size", type=int, default=200, help="image height and width (multiple of 8)")
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per engine (default 5, 1 with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        print(f"error: unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    base = args.base_channels or (16 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 5)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size)
    engines: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for mode in modes:
        _, weight, act = MODES[mode]
        model = UNet(base, weight, act).eval()
        engines[f"{mode}/torch"] = model
        engines[f"{mode}/onnxruntime"] = OnnxForward(model, (args.size, args.size))
    print(f"base_channels {base}, batch {args.batch} x {args.size}x{args.size}, {repeats} repeats, "
          f"{torch.get_num_threads()} threads")
    results = bench_engines(engines, x, repeats)
    print(f"{'mode':34s} {'torch img/s':>12s} {'onnxrt img/s':>13s} {'ratio':>6s} {'torch cpu s/img':>16s} "
          f"{'onnxrt cpu s/img':>17s}")
    table = {}
    for mode in modes:
        t, o = results[f"{mode}/torch"], results[f"{mode}/onnxruntime"]
        ratio = o["images_per_s"] / t["images_per_s"]
        table[mode] = {"torch": t, "onnxruntime": o, "onnxruntime_over_torch": ratio}
        print(f"{MODES[mode][0]:34s} {t['images_per_s']:12.2f} {o['images_per_s']:13.2f} {ratio:6.2f} "
              f"{t['cpu_s_per_image']:16.3f} {o['cpu_s_per_image']:17.3f}")
    if args.json:
        meta = {"base_channels": base, "batch": args.batch, "size": args.size, "repeats": repeats,
                "threads": torch.get_num_threads(), "torch": torch.__version__}
        args.json.write_text(json.dumps({"settings": meta, "modes": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
