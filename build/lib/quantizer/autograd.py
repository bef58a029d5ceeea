"""Straight-through estimators: the forward rules of :mod:`quantizer.functional` with the
backward passes of SPEC §3.

* FIXED, INT and Ternary: identity backward, ``dL/dx = dL/dq``.
* BNN: ``dL/dx = dL/dq * [|x| <= 1]`` (the gradient is cancelled outside [-1, 1]).

The identity passes save nothing for backward, so quantization adds no activation memory
(BNN keeps a 1-byte mask). With ``inplace=True`` the forward overwrites its input
(``ctx.mark_dirty``), as the U-Net's activation quantizers do on the BatchNorm output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import functional as F
from . import native


class _FixedPointSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, i_bits: int, f_bits: int, rounding: str, overflow: str, inplace: bool,
                pow2_min_exponent: int | None):
        if inplace:
            ctx.mark_dirty(x)
        return F.fixed_point_forward(x, i_bits, f_bits, rounding, overflow, inplace, pow2_min_exponent)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        return grad, None, None, None, None, None, None


class _IntMinMaxSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, bits: int, inplace: bool):
        if inplace:
            ctx.mark_dirty(x)
        return F.int_minmax_forward(x, bits, inplace)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        return grad, None, None


class _BinarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, inplace: bool):
        # [|x| <= 1] as a bool mask (1 byte per element, no float temporary; NaN -> False),
        # only when a gradient will be asked for (not in evaluation under no_grad)
        if ctx.needs_input_grad[0]:
            q, inside = F.binary_forward_with_mask(x, inplace)
            ctx.save_for_backward(inside)
        else:
            q = F.binary_forward(x, inplace)
        if inplace:
            ctx.mark_dirty(x)
        return q

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        (inside,) = ctx.saved_tensors
        fused = native.masked_grad(grad, inside)
        return (torch.where(inside, grad, 0.0) if fused is None else fused), None


class _TernarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor):
        return F.ternary_forward(w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        return grad


def fixed_point(
    x: Tensor,
    i_bits: int,
    f_bits: int,
    rounding: str = "nearest",
    overflow: str = "wrap",
    inplace: bool = False,
    pow2_min_exponent: int | None = None,
) -> Tensor:
    """Fixed-point Qi.f quantization with a straight-through (identity) gradient.

    ``rounding="nearest"``: sign-magnitude grid of step ``2^-f``; ``overflow="wrap"`` is the
    original formula (:func:`quantizer.functional.fixed_point_nearest_wrap`), ``"saturate"``
    the textbook clamp to ``2^i - 2^-f``. ``rounding="pow2"``: nearest power of two, 0 below
    ``2^pow2_min_exponent`` (``None``: no bound), clamped to ``±M``
    (:func:`quantizer.functional.fixed_point_pow2`).

    ``inplace=True`` overwrites ``x`` with the result (like ``nn.ReLU(inplace=True)``): it
    saves a full-size allocation; autograd raises if ``x`` was needed by another backward.
    """
    if rounding not in F.ROUNDINGS:
        raise ValueError(f"rounding must be one of {F.ROUNDINGS}, got {rounding!r}")
    if overflow not in F.OVERFLOWS:
        raise ValueError(f"overflow must be one of {F.OVERFLOWS}, got {overflow!r}")
    bound = None if pow2_min_exponent is None else int(pow2_min_exponent)
    return _FixedPointSTE.apply(x, int(i_bits), int(f_bits), rounding, overflow, bool(inplace), bound)


def int_minmax(x: Tensor, bits: int, inplace: bool = False) -> Tensor:
    """Per-tensor min-max integer quantization ``floor(2^b (x-min)/(max-min)) - 2^(b-1)``
    with a straight-through gradient; a constant tensor gives zeros. ``inplace`` as in
    :func:`fixed_point`."""
    return _IntMinMaxSTE.apply(x, int(bits), bool(inplace))


def binary(x: Tensor, inplace: bool = False) -> Tensor:
    """``-1`` where ``x < 0`` else ``+1`` (exact zeros give +1) with the BNN gradient
    ``dL/dx = dL/dq * [|x| <= 1]``; ``inplace`` as in :func:`fixed_point`."""
    return _BinarySTE.apply(x, bool(inplace))


def ternary(w: Tensor) -> Tensor:
    """TWN ternary weights ``alpha_c sign(W) [|W| > delta_c]`` (per output channel, axis 0)
    with a straight-through gradient; an all-zero filter gives zeros."""
    return _TernarySTE.apply(w)
