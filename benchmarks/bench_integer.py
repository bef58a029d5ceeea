#!/usr/bin/env python
"""Inference speed of the integer engines against the float ones, on an EM slice and a CT volume.

For each quantization mode, the EM recipe's model (``EM_BASE/config.yaml``: base_channels 64,
channels_last, eval mode, at its initial weights; the integer fast path's limb count follows the
activation codes the input reaches, and untrained BatchNorm statistics let them grow to the
format's top, so this is the wide case) runs each input through every engine of :data:`ENGINES`:

* ``pytorch_float``: the PyTorch fake-quant forward (the reference of every ratio);
* ``integer``: :class:`unet.integer.IntegerUNet`, its fast exact path (oneDNN's int8
  convolution with checked float32 sums, one fused pass after it: ``predict --engine integer``);
* ``integer_reference``: the same engine's reference path (``fast=False``; ``--reference``,
  slow at base 64);
* ``onnx_float``: the float ONNX export under onnxruntime (``predict --engine onnx``);
* ``onnx_int``: the integer ONNX (``unet.export.onnx_int``: MatMulInteger on 8-bit limbs, threshold
  tables; ``predict --engine onnx-int``); ``null`` in the JSON for modes it refuses (INT).

The process first tunes glibc's allocator as ``unet.predict`` does (:func:`unet.runtime.tune_allocator`:
large tensors from the heap, not fresh zero-filled pages; ``--no-tune-allocator`` to compare).

Inputs: one 512 x 512 EM slice (synthetic, uint8 / 255, as the EM record reads it) and the
benchmark's CT volume (``unet.prep.nih.synthetic_case``, 192 x 192 x 16 HU, windowed 0..255 and
scaled to [0, 1] as the NIH record does; its axial slices are one batch). Rounds are interleaved
(round-robin, every other round reversed) so background load hits every engine alike; per engine
the minimum and the median of the rounds, wall clock and process CPU, and the ratios to
``pytorch_float`` (``> 1``: faster than float) and ``onnx_int`` over ``onnx_float``. The JSON
also records the CPU's integer instruction set (AVX512-VNNI / AVX-VNNI / AMX-INT8 from
/proc/cpuinfo): int8 GEMMs run 2-4x (VNNI) to much more (AMX) faster where the CPU has them.

Run from the repository root::

    python benchmarks/bench_integer.py                    # base_channels 64, pow2 and saturate
    python benchmarks/bench_integer.py --quick            # base_channels 16, small inputs, 1 round
    python benchmarks/bench_integer.py --modes fixed_pow2 --reference --json out.json
    python benchmarks/bench_integer.py --exactness        # fast path against reference path, every code

Another engine is added by appending to :data:`ENGINES` a name and a factory
``f(model, (H, W)) -> callable(x) -> probabilities`` (or None when unavailable).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unet.config import load_config  # noqa: E402
from unet.fileio import atomic_write_text  # noqa: E402
from unet.integer import IntegerUNet, code_mismatches  # noqa: E402
from unet.model import UNet, build_model  # noqa: E402
from unet.prep.em import synthetic_em_stack  # noqa: E402
from unet.prep.nih import synthetic_case  # noqa: E402
from unet.runtime import tune_allocator  # noqa: E402

EM_BASE = REPO / "EM_BASE" / "config.yaml"

from modes import MODES as ALL_MODES  # noqa: E402

MODES = {name: ALL_MODES[name] for name in ("fixed_pow2", "fixed_nearest", "int", "bnn")}
MODES["fixed_saturate"] = ("FIXED nearest saturate a Q6.0 / w Q0.4",
                           ALL_MODES["fixed_nearest"][1] + ["fixed_overflow=saturate"])
DEFAULT_MODES = ("fixed_pow2", "fixed_saturate")

Factory = Callable[[UNet, tuple[int, int]], Callable | None]


def _float_engine(model: UNet, hw: tuple[int, int]) -> Callable:
    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return forward


def _integer_engine(model: UNet, hw: tuple[int, int]) -> Callable:
    return IntegerUNet.from_model(model)


def _integer_reference(model: UNet, hw: tuple[int, int]) -> Callable:
    return IntegerUNet.from_model(model, fast=False)


def _onnx_float(model: UNet, hw: tuple[int, int]) -> Callable:
    from unet.export.onnx import OnnxForward

    return OnnxForward(model, hw)


def _onnx_int(model: UNet, hw: tuple[int, int]) -> Callable | None:
    try:
        from unet.export.onnx_int import IntegerOnnxForward
    except ImportError:
        return None
    from unet.errors import UserError

    try:
        return IntegerOnnxForward(model, hw)
    except UserError as exc:  # a mode no integer graph holds (INT: per-batch ranges)
        print(f"onnx_int skipped: {exc}", file=sys.stderr)
        return None


#: Engines compared, in column order: (name, factory). The first is the reference for ratios.
ENGINES: list[tuple[str, Factory]] = [
    ("pytorch_float", _float_engine),
    ("integer", _integer_engine),
    ("integer_reference", _integer_reference),
    ("onnx_float", _onnx_float),
    ("onnx_int", _onnx_int),
]


def cpu_features() -> dict:
    """The CPU's model name and integer dot-product instruction sets, from /proc/cpuinfo."""
    flags: set[str] = set()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
            elif key.strip() == "model name":
                name = value.strip()
    except OSError:
        pass
    return {"model": name, "avx512_vnni": "avx512_vnni" in flags, "avx_vnni": "avx_vnni" in flags,
            "vnni": bool({"avx512_vnni", "avx_vnni"} & flags), "amx_int8": "amx_int8" in flags,
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags}


def build(mode: str, base_channels: int) -> UNet:
    """The EM recipe's model of ``mode`` (eval mode, channels_last), seeded."""
    cfg = load_config(EM_BASE, EM_BASE, overrides=MODES[mode][1] + [f"base_channels={base_channels}"])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def inputs(quick: bool) -> dict[str, torch.Tensor]:
    """``em``: one EM slice (1, 1, 512, 512) (256 with quick); ``ct``: the CT volume's axial
    slices (16, 1, 192, 192) (4 slices of 96 x 96 with quick), both float32 in [0, 1]."""
    size, ct_shape = (256, (96, 96, 4)) if quick else (512, (192, 192, 16))
    em, _ = synthetic_em_stack(1, size, seed=0)
    em_x = torch.from_numpy(em.astype(np.float32) / 255.0)[:, None]
    ct, _ = synthetic_case(ct_shape, seed=0)
    windowed = np.clip(ct.astype(np.float32), 0.0, 255.0) / 255.0  # NIH record: HU window 0..255
    ct_x = torch.from_numpy(np.ascontiguousarray(windowed.transpose(2, 0, 1)))[:, None]
    return {"em": em_x.contiguous(memory_format=torch.channels_last),
            "ct": ct_x.contiguous(memory_format=torch.channels_last)}


def onnx_profile(model: UNet, x: torch.Tensor) -> dict[str, float]:
    """Seconds of onnxruntime kernel time per operator type in one call (after a warm-up) of the
    integer ONNX graph of ``model`` on ``x``: onnxruntime's own profiler."""
    import tempfile

    from unet.export.onnx import cpu_session
    from unet.export.onnx_int import integer_onnx_model

    proto = integer_onnx_model(model, (x.shape[-2], x.shape[-1]))
    with tempfile.TemporaryDirectory() as folder:
        session = cpu_session(proto, profile_prefix=str(Path(folder) / "ort"))
        feed = {session.get_inputs()[0].name: x.contiguous().numpy()}
        session.run(None, feed)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"] / 2e6  # microseconds, two calls
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def fast_against_reference(model: UNet, data: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Codes of the integer engine's fast path against its reference path at every unit, on the
    benchmark's inputs and adversarial ones (the EM slice x1000, 4 CT slices, noise in [-2, 2],
    a constant 0.7): per input, the differing codes, all codes and the kernels the fast path ran."""
    g = torch.Generator().manual_seed(0)
    cases = {"em": data["em"], "em_x1000": data["em"] * 1000, "ct4": data["ct"][:4],
             "noise": (torch.rand(1, 1, 256, 256, generator=g) * 4 - 2).contiguous(memory_format=torch.channels_last),
             "constant": torch.full((1, 1, 128, 128), 0.7).contiguous(memory_format=torch.channels_last)}
    fast, reference = IntegerUNet.from_model(model), IntegerUNet.from_model(model, fast=False)
    out = {}
    for name, x in cases.items():
        got, expected = fast.forward_codes(x), reference.forward_codes(x)
        out[name] = {"differing": sum(int((got[k] != expected[k]).sum()) for k in expected),
                     "codes": sum(v.numel() for v in expected.values()),
                     "kernels": sorted(set(fast.kernels_used().values()))}
    return out


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values)}


def bench_case(model: UNet, x: torch.Tensor, names: list[str], args: argparse.Namespace,
               log: Callable[[str], None], tag: str) -> dict:
    """Interleaved rounds of every available engine on ``x``; min / median seconds and ratios."""
    hw = (x.shape[-2], x.shape[-1])
    engines: dict[str, Callable] = {}
    for name, factory in ENGINES:
        if name not in names:
            continue
        start = time.perf_counter()
        engine = factory(model, hw)
        if engine is None:
            log(f"  {tag}: {name} is not available here, skipped")
            continue
        engines[name] = engine
        log(f"  {tag}: built {name} in {time.perf_counter() - start:.2f} s")
    wall: dict[str, list[float]] = {n: [] for n in engines}
    cpu: dict[str, list[float]] = {n: [] for n in engines}
    for r in range(args.warmup + args.rounds):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            engines[name](x)
            t, c = time.perf_counter() - t0, time.process_time() - c0
            if r >= args.warmup:
                wall[name].append(t)
                cpu[name].append(c)
            log(f"  {tag} round {r + 1}: {name:18s} {t:7.3f} s wall {c:7.3f} s CPU")
    result: dict = {"shape": list(x.shape), "engines": {}}
    ref = wall.get("pytorch_float")
    for name in engines:
        w = _stats(wall[name])
        entry = {"wall_s": w, "cpu_s": _stats(cpu[name])}
        if ref is not None:
            r = _stats(ref)
            entry["speed_vs_float"] = {k: r[k] / w[k] for k in w}  # > 1: faster than PyTorch float
        result["engines"][name] = entry
    result["engines"].update({n: None for n in names if n not in engines})
    if "onnx_int" in engines and "onnx_float" in engines:
        f, i = _stats(wall["onnx_float"]), _stats(wall["onnx_int"])
        result["onnx_int_speed_vs_onnx_float"] = {k: f[k] / i[k] for k in f}
    integer = engines.get("integer")
    if isinstance(integer, IntegerUNet):
        result["kernels"] = integer.kernels_used()
        if not args.no_check:
            result["code_mismatches_vs_fake_quant"] = sum(code_mismatches(model, integer, x).values())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="base_channels 16, EM 256x256, CT 4 x 96x96, no warm-up, 1 round (a smoke run)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--inputs", default="em,ct", help="comma-separated subset of em, ct")
    parser.add_argument("--base-channels", type=int, default=None, help="default 64 (16 with --quick)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 1, 0 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, 1 with --quick)")
    parser.add_argument("--reference", action="store_true", help="also time the integer engine's reference path")
    parser.add_argument("--no-onnx", action="store_true", help="skip the onnxruntime engines")
    parser.add_argument("--no-check", action="store_true", help="skip the code comparison with the fake-quant model")
    parser.add_argument("--onnx-profile", action="store_true",
                        help="only profile the integer ONNX (onnxruntime kernel time per operator), no rounds")
    parser.add_argument("--exactness", action="store_true",
                        help="only compare the fast path's codes with the reference path's (every unit), no rounds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                        help="leave glibc's allocator as it is (unet.predict calls unet.runtime.tune_allocator)")
    args = parser.parse_args(argv)
    base = args.base_channels or (16 if args.quick else 64)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    args.rounds = args.rounds or (1 if args.quick else 5)
    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    cases = [c for c in args.inputs.split(",") if c]
    if unknown or not modes or any(c not in ("em", "ct") for c in cases) or not cases:
        print(f"error: --modes must name some of {list(MODES)} and --inputs some of em, ct", file=sys.stderr)
        return 2
    names = [n for n, _ in ENGINES if (n != "integer_reference" or args.reference)
             and (not n.startswith("onnx") or not args.no_onnx)]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    allocator = tune_allocator() if args.tune_allocator else False  # as unet.predict runs
    data = inputs(args.quick)
    results: dict = {
        "settings": {"base_channels": base, "rounds": args.rounds, "warmup": args.warmup,
                     "tune_allocator": allocator, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "cpu": cpu_features(), "loadavg_start": os.getloadavg()},
        "modes": {},
    }
    if args.exactness:
        checks = {mode: fast_against_reference(build(mode, base), data) for mode in modes}
        for mode, per in checks.items():
            for name, r in per.items():
                kernels = ", ".join(r["kernels"])
                print(f"{mode}/{name}: {r['differing']} of {r['codes']} codes differ; kernels {kernels}")
            print(f"{mode}: {sum(r['differing'] for r in per.values())} of {sum(r['codes'] for r in per.values())} "
                  "codes differ in all")
        if args.json:
            atomic_write_text(args.json, json.dumps({"settings": results["settings"], "fast_against_reference": checks},
                                                    indent=2) + "\n")
        return 0
    if args.onnx_profile:
        profiles = {f"{mode}/{case}": onnx_profile(build(mode, base), data[case])
                    for mode in modes for case in cases}
        for key, totals in profiles.items():
            print(f"{key}: " + ", ".join(f"{op} {t:.2f} s" for op, t in totals.items() if t >= 0.01)
                  + f"; all {sum(totals.values()):.2f} s")
        if args.json:
            atomic_write_text(args.json, json.dumps({"settings": results["settings"], "onnx_int_profile": profiles},
                                                    indent=2) + "\n")
        return 0
    for mode in modes:
        model = build(mode, base)
        results["modes"][mode] = {"label": MODES[mode][0], "inputs": {
            c: bench_case(model, data[c], names, args, log, f"{mode}/{c}") for c in cases}}
    results["settings"]["loadavg_end"] = os.getloadavg()
    cpu = results["settings"]["cpu"]
    print(f"base_channels {base}, {args.rounds} rounds, {torch.get_num_threads()} threads, {cpu['model']} "
          f"(VNNI {cpu['vnni']}, AMX-INT8 {cpu['amx_int8']}), allocator tuned {allocator}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'mode':38s} {'input':5s} {'engine':18s} {'min s':>8s} {'median s':>9s} {'vs float (min/med)':>19s}")
    for r in results["modes"].values():
        for case, res in r["inputs"].items():
            for name, e in res["engines"].items():
                if e is None:
                    print(f"{r['label']:38s} {case:5s} {name:18s} {'n/a':>8s}")
                    continue
                ratio = e.get("speed_vs_float", {})
                print(f"{r['label']:38s} {case:5s} {name:18s} {e['wall_s']['min']:8.3f} {e['wall_s']['median']:9.3f} "
                      f"{ratio.get('min', float('nan')):8.2f}x/{ratio.get('median', float('nan')):.2f}x")
            if "onnx_int_speed_vs_onnx_float" in res:
                o = res["onnx_int_speed_vs_onnx_float"]
                print(f"{'':38s} {case:5s} onnx_int vs onnx_float {o['min']:.2f}x/{o['median']:.2f}x")
            if "code_mismatches_vs_fake_quant" in res:
                print(f"{'':38s} {case:5s} integer codes differing from the fake-quant model: "
                      f"{res['code_mismatches_vs_fake_quant']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
