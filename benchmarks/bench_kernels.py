#!/usr/bin/env python
"""Each quantizer rule with the fused kernels of quantizer.native against the PyTorch rules.

On one activation (channels_last, the model's layout) it times, the two forms taking turns,
the median of ``--reps`` calls of: every activation rule in place (as the U-Net calls them),
the BNN rule with its gradient mask and the BNN backward, and the evaluation-mode
ReLU -> BatchNorm -> quantizer unit (quantizer.fusion) against the three modules in turn. It
prints both times and their ratio, and checks that both forms give the same values.

Run from the repository root::

    python benchmarks/bench_kernels.py                     # 4x64x200x200 (the EM width), a few seconds
    python benchmarks/bench_kernels.py --shape 4 16 128 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from quantizer import QuantSpec, fusion, native  # noqa: E402
from quantizer import autograd as ste  # noqa: E402
from quantizer import functional as F  # noqa: E402
from unet.runtime import tune_allocator  # noqa: E402

RULES = {
    "FIXED pow2 Q6.0": QuantSpec("fixed", 6, 0, "pow2"),
    "FIXED nearest wrap Q2.2": QuantSpec("fixed", 2, 2),
    "FIXED nearest wrap Q6.0": QuantSpec("fixed", 6, 0),
    "FIXED nearest saturate Q2.2": QuantSpec("fixed", 2, 2, overflow="saturate"),
    "INT 8": QuantSpec("int", 8),
    "BNN": QuantSpec("binary"),
}


def median_us(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1e6


def both(fn: Callable[[], torch.Tensor], reps: int) -> tuple[float, float, bool]:
    """(kernel us, PyTorch us, same values) for ``fn`` (the two forms alternate per round)."""
    fused, plain = [], []
    for _ in range(3):
        with native.enabled(True):
            fused.append(median_us(fn, reps))
        with native.enabled(False):
            plain.append(median_us(fn, reps))
    with native.enabled(True):
        a = fn()
    with native.enabled(False):
        b = fn()
    same = torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                       b.view(torch.int32) if b.dtype == torch.float32 else b)
    return min(fused), min(plain), same


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, nargs=4, default=[4, 64, 200, 200], metavar=("N", "C", "H", "W"))
    p.add_argument("--reps", type=int, default=15, help="calls per timing (median)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; kernels: {native.status()}")
    if native.library() is None:
        print("the kernels are not available here: nothing to compare")
        return 1
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(*args.shape, generator=g) * 3).contiguous(memory_format=torch.channels_last)
    channels = args.shape[1]
    bn = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2.0, generator=g)
    work = torch.empty_like(x)
    rows = []
    with torch.no_grad():
        for name, spec in RULES.items():
            rows.append((f"{name}, in place", *both(lambda s=spec: s(work.copy_(x), inplace=True), args.reps)))
        grad = torch.randn(*args.shape, generator=g).contiguous(memory_format=torch.channels_last)
        inside = (x.abs() <= 1).contiguous(memory_format=torch.channels_last)
        rows.append(("BNN with its gradient mask", *both(
            lambda: F.binary_forward_with_mask(work.copy_(x), True)[1], args.reps)))
        rows.append(("BNN backward (mask the gradient)", *both(
            lambda: ste._BinarySTE.backward(type("ctx", (), {"saved_tensors": (inside,)})(), grad)[0], args.reps)))
        for name, spec in {"Normal": QuantSpec(), "FIXED pow2 Q6.0": RULES["FIXED pow2 Q6.0"],
                           "INT 8": RULES["INT 8"], "BNN": RULES["BNN"]}.items():
            def unit(s=spec):
                fused = fusion.relu_batchnorm_quantize(x, True, bn, s)
                return fused if fused is not None else s(bn(torch.relu(x)), inplace=True)
            rows.append((f"eval ReLU -> BatchNorm -> {name}", *both(unit, args.reps)))
    print(f"\nactivation {tuple(args.shape)} float32 channels_last; median of {args.reps} calls, best of 3 rounds")
    print(f"{'rule':44s} {'kernel us':>10s} {'PyTorch us':>11s} {'x faster':>9s}  same values")
    for name, fused, plain, same in rows:
        print(f"{name:44s} {fused:10.0f} {plain:11.0f} {plain / fused:9.1f}  {'yes' if same else 'NO'}")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
