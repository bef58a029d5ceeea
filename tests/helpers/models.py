"""Small U-Nets trained a few Adam steps, so that weights and BatchNorm statistics have moved off
their initial values (what the exporters, the integer engine and the storage codes are tested on)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from quantizer import QuantSpec

Batch = tuple[torch.Tensor, torch.Tensor]


def trained_unet(specs: tuple[QuantSpec, QuantSpec], batches: Batch | Callable[[], Batch], *, steps: int, lr: float,
                 seed: int, activation: str = "relu", dropout: float = 0.0, channels_last: bool = False,
                 clamp: bool = True):
    """A base_channels 4 :class:`unet.model.UNet` with (weight, activation) ``specs``, built after
    ``torch.manual_seed(seed)`` and trained ``steps`` Adam steps at learning rate ``lr`` on binary
    cross-entropy. ``batches`` is one fixed (images, masks) pair, or a function called once per step
    for a fresh pair (after the model is built, so the global random stream is part of the recipe).
    ``clamp`` keeps the probabilities in [1e-6, 1 - 1e-6] inside the loss. Returned in training
    mode, laid out channels_last when asked (as the trainer builds it)."""
    from unet.model import UNet

    torch.manual_seed(seed)
    model = UNet(4, *specs, activation=activation, dropout=dropout)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        x, y = batches() if callable(batches) else batches
        p = model(x)
        if clamp:
            p = p.clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(p, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def random_batch(n: int = 2, size: int = 16) -> Batch:
    """``n`` uniform random ``size`` px images and random binary masks, drawn from the global
    random stream (images first)."""
    x = torch.rand(n, 1, size, size)
    y = (torch.rand(n, 1, size, size) > 0.5).float()
    return x, y
