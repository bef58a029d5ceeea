"""How much does flushing small pow2 magnitudes change a trained model? (``pow2_min_exponent``)

Loads a pow2 run's ``best.pt`` and evaluates its validation set once per candidate bound,
without retraining: Dice, the share of quantized weights flushed to 0 and the share of
activation-quantizer inputs flushed to 0 (magnitudes that round below ``2^e``). ``-126`` is the
reference: it flushes only float32 subnormals, i.e. the original unbounded rule.

    python benchmarks/pow2_flush.py em/quickstart/runs/quickstart [-e -12 -10 -8 -6]

BatchNorm runs in the run's ``val_bn_mode``; the state is reloaded for every candidate.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from quantizer import ActivationQuantizer, QuantConv2d
from unet.checkpoint import load_checkpoint, load_model_state
from unet.config import load_config
from unet.experiments import load_recipe
from unet.model import build_model
from unet.train import evaluate

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-e", "--exponents", type=int, nargs="+", default=[-126, -12, -10, -9, -8, -7, -6, -5, -4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    saved = args.run_dir / "config.yaml"
    state = load_checkpoint(args.run_dir / "best.pt")
    name = str(state.get("dataset", "EM")).upper()
    recipe = load_recipe(REPO / f"{name}_BASE" / f"{name.lower()}_unet.py")
    cfg = load_config(recipe.base_config, saved, "UNET", (), recipe.extra_keys)
    val_set = recipe.build_val(cfg)
    print(f"{args.run_dir}: epoch {state.get('epoch')}, {len(val_set)} validation slices")
    print("min_exponent  dice   weights_flushed  activations_flushed")
    for e in args.exponents:
        model = build_model(cfg)
        load_model_state(model, state["model"], args.run_dir / "best.pt")
        counts = {"act": 0, "act_zero": 0}
        threshold = 2.0 ** (e - 0.5)

        def count(module, inputs, _output, counts=counts, threshold=threshold):
            x = inputs[0]
            counts["act"] += x.numel()
            counts["act_zero"] += int(((x.abs() < threshold) & (x != 0)).sum())

        flushed = total = 0
        for module in model.modules():
            if isinstance(module, QuantConv2d) and module.weight_quant.is_pow2:
                module.weight_quant = dataclasses.replace(module.weight_quant, pow2_min_exponent=e)
                w = module.weight.detach()
                flushed += int(((w.abs() < threshold) & (w != 0)).sum())
                total += w.numel()
            if isinstance(module, ActivationQuantizer) and module.spec.is_pow2:
                module.spec = dataclasses.replace(module.spec, pow2_min_exponent=e)
                module.inplace = False
                module.register_forward_hook(count)
        summary, _, _ = evaluate(model, val_set, cfg, torch.device("cpu"), recipe.isbi_metrics)
        print(f"{e:12d}  {summary['dice']:6.2f}  {flushed / max(total, 1):15.4%}  "
              f"{counts['act_zero'] / max(counts['act'], 1):18.4%}")


if __name__ == "__main__":
    main()
