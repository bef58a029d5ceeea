"""Training losses (SPEC §5). Inputs are sigmoid probabilities ``p`` and binary targets ``y``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor

SMOOTH = 1e-4
LOSSES = ("bce_dice_original", "bce_dice", "dice")


def soft_dice(p: Tensor, y: Tensor, smooth: float = SMOOTH) -> Tensor:
    """Soft Dice over the whole batch: ``(2 sum(p y) + s) / (sum p + sum y + s)``, s = 1e-4."""
    return (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)


def dice_loss(p: Tensor, y: Tensor) -> Tensor:
    """``-soft_dice(p, y)`` (the GM and NIH loss; ranges over [-1, 0))."""
    return -soft_dice(p, y)


def bce_dice_original_loss(p: Tensor, y: Tensor) -> Tensor:
    """The original EM loss: ``0.5 BCEWithLogits(p, y) + 0.5 (1 - soft_dice(p, y))``.

    ``p`` is already a probability, so the BCE term applies a second sigmoid (kept for
    faithfulness: it shaped the published EM numbers).
    """
    return 0.5 * F.binary_cross_entropy_with_logits(p, y) + 0.5 * (1 - soft_dice(p, y))


def bce_dice_loss(p: Tensor, y: Tensor) -> Tensor:
    """Corrected EM loss: ``0.5 BCE(p, y) + 0.5 (1 - soft_dice(p, y))`` on probabilities.

    The BCE log terms are clamped at -100 (PyTorch's convention), so p = 0 or 1 is finite.
    """
    return 0.5 * F.binary_cross_entropy(p, y) + 0.5 * (1 - soft_dice(p, y))


def get_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The loss function named by the config's ``loss`` key."""
    table = {"bce_dice_original": bce_dice_original_loss, "bce_dice": bce_dice_loss, "dice": dice_loss}
    if name not in table:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return table[name]


__all__ = ["LOSSES", "bce_dice_loss", "bce_dice_original_loss", "dice_loss", "get_loss", "soft_dice"]
