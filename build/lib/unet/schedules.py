"""Learning-rate and ternarytanh-beta schedules (SPEC §5), stepped once per epoch."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, MultiStepLR


def multistep_milestones(num_epochs: int) -> list[int]:
    """Epochs after which the EM recipe multiplies the LR by 0.1.

    The original computed ``range(0, N, N // 5)``; epoch 0 never triggers a step, so the
    milestones are the rest: N/5, 2N/5, 3N/5, 4N/5 when 5 divides N (N=200: 40, 80, 120,
    160), and ``N // 5`` apart otherwise (N=12: 2, 4, 6, 8, 10). For N < 5 the original
    crashed (step 0); here there are no steps.
    """
    if num_epochs < 5:
        return []
    return list(range(0, num_epochs, num_epochs // 5))[1:]


def make_lr_scheduler(optimizer: Optimizer, name: str, num_epochs: int) -> LRScheduler:
    """``multistep`` (x0.1 at :func:`multistep_milestones`), ``cosine`` (to 0 over N epochs,
    ``lr_e = lr_0 (1 + cos(pi e / N)) / 2``) or ``constant``."""
    if name == "multistep":
        return MultiStepLR(optimizer, milestones=multistep_milestones(num_epochs), gamma=0.1)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=num_epochs, eta_min=0.0)
    if name == "constant":
        return LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown lr_scheduler {name!r}")


def ternary_beta(epoch: int, num_epochs: int) -> float:
    """ternarytanh ``b`` for 1-based ``epoch`` of ``num_epochs``: ``3 + 5 (e - 1) / (N - 1)``,
    rising linearly from 3 to 8 (3 throughout when N = 1)."""
    if num_epochs <= 1:
        return 3.0
    return 3.0 + 5.0 * (epoch - 1) / (num_epochs - 1)
