"""The ``precision`` config key: float32, or the float layers under ``torch.autocast``.

``32`` changes nothing. ``bf16`` runs convolutions (and whatever else autocast lowers) in
bfloat16; ``16-mixed`` in float16 with a GradScaler against gradient underflow (CUDA only).
The quantizers always compute in float32 (:mod:`quantizer.modules` casts their input), so the
Qi.f grids stay exact: a Q8.8 value needs 17 significant bits, more than either half type holds.
"""

from __future__ import annotations

import contextlib

import torch

#: The autocast dtype of each ``precision`` (None: no autocast).
DTYPES: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: ``torch.autocast(device.type, dtype)`` for ``bf16`` and
    ``16-mixed``, a no-op for ``32``."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A GradScaler for ``16-mixed`` on CUDA (loss scaled before backward, steps with inf/NaN
    gradients skipped, scale adapted); None otherwise (bfloat16 has float32's exponent range)."""
    if precision == "16-mixed" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


__all__ = ["DTYPES", "autocast", "grad_scaler"]
