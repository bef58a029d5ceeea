"""Tiny trained U-Nets of every export mode and the disc images they train on (the ONNX,
QONNX-tools and hls4ml export tests share them)."""

from __future__ import annotations

import torch

from quantizer import FLOAT, QuantSpec
from unet.model import UNet, quant_specs

from .models import trained_unet


def fixed(i: int, f: int, overflow: str = "wrap", rounding: str = "nearest") -> QuantSpec:
    return QuantSpec("fixed", i, f, rounding, overflow)


#: mode -> (weight spec, activation spec)
MODES: dict[str, tuple[QuantSpec, QuantSpec]] = {
    "normal": (FLOAT, FLOAT),
    "wrap_q6.0_q0.4": (fixed(0, 4), fixed(6, 0)),
    "saturate_q6.0_q0.4": (fixed(0, 4, "saturate"), fixed(6, 0, "saturate")),
    "wrap_q8.8": (fixed(8, 8), fixed(8, 8)),
    "saturate_q8.8": (fixed(8, 8, "saturate"), fixed(8, 8, "saturate")),
    "pow2_q6.0_q0.4": (fixed(0, 4, rounding="pow2"), fixed(6, 0, rounding="pow2")),
    "int8": quant_specs("INT", 8, 0, 8, 0),
    "bnn": quant_specs("BNN", 0, 0, 0, 0),
    "ternary": quant_specs("Ternary", 0, 0, 0, 0),
}


def blobs(n: int, hw: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images of up to three discs and their masks, (n, 1, hw, hw)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(hw), torch.arange(hw), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        mask = torch.zeros(hw, hw)
        for _ in range(3):
            cy, cx = torch.randint(0, hw, (2,), generator=g)
            r = torch.randint(3, hw // 4, (1,), generator=g)
            mask = torch.maximum(mask, (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2).float())
        images.append(mask + 0.3 * torch.randn(hw, hw, generator=g))
        masks.append(mask)
    return torch.stack(images)[:, None], torch.stack(masks)[:, None]


_TRAINED: dict[str, UNet] = {}


def trained(mode: str) -> UNet:
    """A base_channels 4 model of ``mode`` after 4 Adam steps on blobs (weights and BatchNorm
    statistics away from their init), in eval mode."""
    if mode not in _TRAINED:
        _TRAINED[mode] = trained_unet(MODES[mode], blobs(8, 32, 0), steps=4, lr=1e-2, seed=1, clamp=False).eval()
    return _TRAINED[mode]
