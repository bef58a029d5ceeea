"""Tiny trained U-Nets of every integer-engine mode, and the images they are checked on
(the integer engine's reference-path and fast-path tests share them)."""

from __future__ import annotations

import torch

from unet.model import UNet, quant_specs

from .models import trained_unet

SIZE = 32
CL = torch.channels_last


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of bright discs and their masks, (n, 1, SIZE, SIZE)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    masks = torch.zeros(n, 1, SIZE, SIZE)
    for k in range(n):
        for _ in range(3):
            cy, cx = torch.randint(0, SIZE, (2,), generator=g).tolist()
            r = int(torch.randint(3, SIZE // 4, (1,), generator=g))
            masks[k, 0] = torch.maximum(masks[k, 0], (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).float())
    images = masks * 0.6 + 0.2 + 0.1 * torch.randn(n, 1, SIZE, SIZE, generator=g)
    return images.contiguous(memory_format=CL), masks


_MODELS: dict[tuple, UNet] = {}


def trained(mode: str, act=(6, 0), weight=(0, 4), rounding="nearest", overflow="wrap", activation="relu") -> UNet:
    """A tiny model of the given quantization, trained 8 steps (cached per configuration)."""
    key = (mode, act, weight, rounding, overflow, activation)
    if key not in _MODELS:
        specs = quant_specs(mode, act[0], act[1], weight[0], weight[1], rounding, overflow)
        _MODELS[key] = trained_unet(specs, blobs(8, 1), steps=8, lr=1e-2, seed=0, activation=activation,
                                    channels_last=True).eval()
    return _MODELS[key]


VALIDATION = blobs(4, 2)[0]

EXACT_CASES = {
    "Q8.0/Q0.8": dict(mode="FIXED", act=(8, 0), weight=(0, 8)),
    "Q8.0/Q0.8 saturate": dict(mode="FIXED", act=(8, 0), weight=(0, 8), overflow="saturate"),
    "Q6.0/Q0.4": dict(mode="FIXED"),
    "Q6.0/Q0.4 saturate": dict(mode="FIXED", overflow="saturate"),
    "Q4.0/Q0.2": dict(mode="FIXED", act=(4, 0), weight=(0, 2)),
    "Q4.0/Q0.2 saturate": dict(mode="FIXED", act=(4, 0), weight=(0, 2), overflow="saturate"),
    "pow2 Q6.0/Q0.4": dict(mode="FIXED", rounding="pow2"),
    "Q8.0/Q0.8 ternarytanh": dict(mode="FIXED", act=(8, 0), weight=(0, 8), activation="ternarytanh"),
    "Q6.0/Q0.4 tanh": dict(mode="FIXED", activation="tanh"),
    "BNN": dict(mode="BNN"),
    "INT8": dict(mode="INT", act=(8, 0), weight=(8, 0)),
}


def adversarial_inputs() -> dict[str, torch.Tensor]:
    """The validation images and adversarial ones: x1000, noise, constants."""
    g = torch.Generator().manual_seed(7)
    shape = VALIDATION.shape
    return {
        "validation": VALIDATION,
        "x1000": VALIDATION * 1000,
        "noise": (torch.randn(shape, generator=g) * 10).contiguous(memory_format=CL),
        "zeros": torch.zeros(shape).contiguous(memory_format=CL),
        "ones": torch.ones(shape).contiguous(memory_format=CL),
        "minus": torch.full(shape, -50.0).contiguous(memory_format=CL),
    }
