"""The cases on which the fast quantizer code (fused kernels, fusion, rewritten rules) is compared
with the plain PyTorch rules: specs of every kind, tensors of every scale with special values, and
a short training run per quantization mode."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from quantizer import QuantSpec

from .commands import REPO

EM_BASE = REPO / "EM_BASE" / "config.yaml"

#: Specs of every kind and variant: pow2 with several exponent bounds, nearest wrap and saturate,
#: INT of several widths, binary.
SPECS = [QuantSpec("fixed", 6, 0, "pow2"), QuantSpec("fixed", 0, 4, "pow2"),
         QuantSpec("fixed", 2, 3, "pow2", pow2_min_exponent=-3),
         QuantSpec("fixed", 1, 0, "pow2", pow2_min_exponent=0), QuantSpec("fixed", 8, 8, "pow2", pow2_min_exponent=-20),
         QuantSpec("fixed", 6, 0), QuantSpec("fixed", 0, 4), QuantSpec("fixed", 2, 2), QuantSpec("fixed", 3, 3),
         QuantSpec("fixed", 0, 0), QuantSpec("fixed", 8, 8), QuantSpec("fixed", 6, 4, overflow="saturate"),
         QuantSpec("fixed", 0, 3, overflow="saturate"), QuantSpec("int", 8), QuantSpec("int", 4), QuantSpec("int", 1),
         QuantSpec("int", 24), QuantSpec("binary")]

#: Signed zeros, infinities, ties, the smallest normal and subnormal, the float32 extremes.
SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), 1.0, -1.0, 0.5, 2.5, 2.0**-126, 2.0**-149, -(2.0**-149),
           3.0e38, -3.0e38, 1.4142135, 1.4142137, 0.70710677]


def samples(seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """Tensors of every scale, with special values, some 4-D in channels_last (the model's layout)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for scale in (1e-42, 1e-30, 1e-3, 1.0, 7.0, 1e4, 1e30, 3e38):
        x = torch.randn(2, 5, 6, 7, generator=g) * scale
        out += [x.to(dtype), x.to(dtype).contiguous(memory_format=torch.channels_last)]
        out.append(torch.cat([x.flatten(), torch.tensor(SPECIAL)]).to(dtype))
    out.append(torch.full((3, 4), 2.5, dtype=dtype))  # constant
    out.append(torch.tensor([1.0, float("nan"), -2.0], dtype=dtype))
    out.append(torch.randn(4, 3, 5, 5, generator=g).to(dtype)[:, :, ::2])  # not dense
    return out


#: One short training run per quantization mode: the config overrides of each.
MODE_OVERRIDES = {
    "normal": ["quantization=Normal"],
    "fixed_nearest": ["quantization=FIXED", "activation_i_width=2", "activation_f_width=2",
                      "weight_i_width=0", "weight_f_width=4", "fixed_rounding=nearest"],
    "fixed_pow2": ["quantization=FIXED", "activation_i_width=6", "weight_f_width=4", "fixed_rounding=pow2"],
    "int": ["quantization=INT", "activation_i_width=8", "weight_i_width=8"],
    "bnn": ["quantization=BNN"],
    "ternary": ["quantization=Ternary"],
}


def train_metrics(data: Path, out: Path, overrides: list[str]) -> list[dict[str, str]]:
    """Train the EM recipe 2 epochs in this process (4 channels, 32 px crops, batches of 2) on
    ``data`` with ``overrides``, logging under ``out``; the rows of its metrics.csv without the
    wall-clock column."""
    from unet.config import load_config
    from unet.recipes import png_pair_recipe
    from unet.train import run

    recipe = png_pair_recipe("EM", EM_BASE, "prepare", isbi_metrics=True)
    cfg = load_config(EM_BASE, EM_BASE, overrides=overrides + [
        f"dataset_path={data}", "crop_size=[32, 32]", "base_channels=4", "num_epochs=2", "batch_size=2",
        "val_batch_size=2", f"log_output_dir={out}", "experiment_name=run", "lr=0.01"])
    assert run(cfg, recipe, script="test") == 0
    with open(out / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        del row["seconds"]  # wall-clock time, the one column allowed to differ
    return rows
