#!/usr/bin/env python
"""How often the integer ONNX's float first block moves a code, on models trained through the real trainer.

The integer ONNX (``--format onnx-int``, :mod:`unet.export.onnx_int`) is exact from the first
block's codes on; the first block (float weights) and its quantizer run in onnxruntime's float32
summation order, which can put a value within rounding of a quantizer step on the neighbouring
code (and the flip then propagates). For every mode the export expresses (FIXED nearest wrap and
saturate Q6.0 / Q0.4, pow2 Q6.0 / Q0.4, BNN) this trains a small EM model with the real trainer
(``benchmarks/exactness.py``'s ``prepare`` / ``train``: synthetic EM data, quick-start config),
loads its ``best.pt`` as ``unet.predict`` does and counts, per input (the validation slices,
x1000, uniform noise, a constant 0.5, zeros, Gaussian noise x10, a constant -50):

* ``first_block``: codes of the first block's output (``enc1.1``) where onnxruntime differs
  from PyTorch (= the integer engine), out of ``codes``;
* ``all_units``: codes of every unit that differ (the flips and what they propagate to);
* ``integer_part``: codes that differ when the graph is fed the engine's own first-block codes
  (0 = the integer part is exact);
* ``mask_flips``: pixels of the 0.5 mask that differ from the integer engine's; ``max_prob_diff``.

    python benchmarks/onnx_int_flips.py                       # base_channels 8, 1 epoch, 4 modes
    python benchmarks/onnx_int_flips.py --modes bnn --base-channels 4 --resize 96 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for path in (REPO, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from exactness import prepare, train, validation_images  # noqa: E402  (benchmarks/exactness.py)

from unet.exactness import adversarial_inputs  # noqa: E402
from unet.export.onnx_int import IntegerOnnxForward  # noqa: E402
from unet.integer import IntegerUNet  # noqa: E402

#: The modes of :data:`unet.exactness.MODES` the integer ONNX expresses.
MODES = ("wrap_q6.0_q0.4", "saturate_q6.0_q0.4", "pow2_q6.0_q0.4", "bnn")


def inputs(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`unet.exactness.adversarial_inputs` plus Gaussian noise x10 and a constant -50."""
    out = adversarial_inputs(images)
    g = torch.Generator().manual_seed(1)
    out["gauss10"] = torch.randn(images.shape, generator=g) * 10
    out["minus50"] = torch.full(images.shape, -50.0)
    return out


@torch.no_grad()
def measure(model, x: torch.Tensor) -> dict:
    """The counts of the module docstring for one input batch ``x``."""
    x = x.contiguous(memory_format=torch.channels_last)
    engine = IntegerUNet.from_model(model)
    hw = tuple(x.shape[-2:])
    whole = IntegerOnnxForward(model, hw, taps=True)
    part = IntegerOnnxForward(model, hw, taps=True, start="codes")
    expected = engine.forward_codes(x)
    got = whole.forward_codes(x)
    fed = part.forward_codes(expected["enc1.1"])
    p_engine, p_onnx = engine(x), whole(x)
    return {
        "codes": int(expected["enc1.1"].numel()),
        "first_block": int((got["enc1.1"] != expected["enc1.1"]).sum()),
        "first_block_unit0": int((got["enc1.0"] != expected["enc1.0"]).sum()),
        "all_units": sum(int((got[k] != expected[k]).sum()) for k in expected),
        "all_codes": sum(int(v.numel()) for v in expected.values()),
        "integer_part": sum(int((fed[k] != expected[k]).sum()) for k in fed),
        "mask_flips": int(((p_engine > 0.5) != (p_onnx > 0.5)).sum()),
        "max_prob_diff": float((p_engine - p_onnx).abs().max()),
    }


def main(argv: list[str] | None = None) -> int:
    """Train, measure, print a table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--slices", type=int, default=10, help="synthetic slices (a fifth are validation)")
    parser.add_argument("--size", type=int, default=256, help="synthetic slice size before --resize")
    parser.add_argument("--resize", type=int, default=128, help="prepared slice size (a multiple of 8)")
    parser.add_argument("--crop", type=int, default=64, help="training crop")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.resize % 8:
        print(f"error: --resize must be a multiple of 8, got {args.resize}", file=sys.stderr)
        return 2
    from unet.predict.cli import load_predictor

    work = args.work or Path(tempfile.mkdtemp(prefix="onnx-int-flips-"))
    data = work / "data"
    prepare(data, args.slices, args.size, args.resize)
    images = validation_images(data)
    results: dict[str, dict] = {}
    print("| mode | input | first-block codes moved | all unit codes moved | integer part | 0.5-mask pixels | "
          "max prob diff |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        run_dir = train(work / "runs", mode, data, args)
        model = load_predictor(run_dir).model.eval()
        results[mode] = {}
        for name, x in inputs(images).items():
            r = results[mode][name] = measure(model, x)
            print(f"| {mode} | {name} | {r['first_block']} / {r['codes']} | {r['all_units']} / {r['all_codes']} | "
                  f"{r['integer_part']} | {r['mask_flips']} | {r['max_prob_diff']:.1e} |", flush=True)
    total = sum(r["first_block"] for m in results.values() for r in m.values())
    codes = sum(r["codes"] for m in results.values() for r in m.values())
    print(f"\nfirst-block codes moved by onnxruntime's summation order: {total} of {codes}")
    if args.json is not None:
        record = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                  "torch": torch.__version__, "results": results}
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
