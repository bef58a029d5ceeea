"""Forward rules of every quantizer, as pure tensor functions (SPEC §3).

Nothing here tracks gradients: :mod:`quantizer.autograd` wraps these rules with their
straight-through backward passes. Notation: ``i`` integer bits, ``f`` fractional bits,
``round`` is round-half-to-even (``torch.round``), ``sign(0) = 0``.

Each rule also has a ``*_codes`` form returning the integer codes ``c`` and the scale ``s``
of the quantized tensor, with ``q == c * s`` exactly; a hardware export reads these.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROUNDINGS = ("nearest", "pow2")
OVERFLOWS = ("wrap", "saturate")


def _check_bits(i_bits: int, f_bits: int) -> None:
    if int(i_bits) != i_bits or int(f_bits) != f_bits or i_bits < 0 or f_bits < 0:
        raise ValueError(f"bit widths must be integers >= 0, got i={i_bits}, f={f_bits}")


def fixed_point_nearest_wrap(x: Tensor, i_bits: int, f_bits: int) -> Tensor:
    """Sign-magnitude Qi.f of the original GM/NIH code (and the paper's formula).

    With ``a = |x|``::

        q = sign(x) * ( min(floor(a), 2^i - 1) + round((a - floor(a)) * 2^f) / 2^f )

    and the fractional term is 0 when ``f = 0``. The integer and fractional parts are
    quantized separately, so the fraction may round up to 1 (0.9 -> 1.0 at Q0.2), the
    fraction survives above the range (Q3.3: 15.99 -> 8.0) and with ``i = 0`` magnitudes
    wrap modulo 1 (Q0.2: 1.3 -> 0.25). Largest magnitude ``2^i``.
    """
    _check_bits(i_bits, f_bits)
    a = x.abs()
    whole = a.floor()
    q = whole.clamp_max(2.0**i_bits - 1)
    if f_bits > 0:
        scale = 2.0**f_bits
        q = q + torch.round((a - whole) * scale) / scale
    return q * x.sign()


def fixed_point_nearest_saturate(x: Tensor, i_bits: int, f_bits: int) -> Tensor:
    """Textbook sign-magnitude Qi.f: ``q = sign(x) * min(round(|x| 2^f) / 2^f, 2^i - 2^-f)``.

    Monotone, no wrap-around; the grid is ``2^-f`` and the largest magnitude
    ``2^i - 2^-f`` (so Q0.0 maps everything to 0).
    """
    _check_bits(i_bits, f_bits)
    scale = 2.0**f_bits
    limit = 2.0**i_bits - 1.0 / scale
    return (torch.round(x.abs() * scale) / scale).clamp_max(limit) * x.sign()


def pow2_limit(i_bits: int, f_bits: int) -> float:
    """Clamp bound of the power-of-two rounding: ``M = [2^(i-1) if i>0] + [1 - 2^-f if f>0]``."""
    _check_bits(i_bits, f_bits)
    whole = 2.0 ** (i_bits - 1) if i_bits > 0 else 0.0
    frac = 1.0 - 2.0**-f_bits if f_bits > 0 else 0.0
    return whole + frac


def fixed_point_pow2(x: Tensor, i_bits: int, f_bits: int) -> Tensor:
    """Power-of-two rounding of the original EM code.

    ``p = sign(x) * 2^round(log2 |x|)`` (0 stays 0), then clamped to ``[-M, M]`` with
    ``M = pow2_limit(i, f)``. There is no grid: small magnitudes stay small powers of two
    (0.001 -> 2^-10 at any width).
    """
    limit = pow2_limit(i_bits, f_bits)
    p = torch.exp2(torch.round(torch.log2(x.abs())))
    return p.clamp_max(limit) * x.sign()


def fixed_point_forward(
    x: Tensor, i_bits: int, f_bits: int, rounding: str = "nearest", overflow: str = "wrap"
) -> Tensor:
    """Dispatch to the FIXED variant named by ``rounding`` and ``overflow``.

    ``rounding="pow2"`` ignores ``overflow`` (it always clamps to ``±M``).
    """
    if rounding == "pow2":
        return fixed_point_pow2(x, i_bits, f_bits)
    if rounding != "nearest":
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if overflow == "wrap":
        return fixed_point_nearest_wrap(x, i_bits, f_bits)
    if overflow == "saturate":
        return fixed_point_nearest_saturate(x, i_bits, f_bits)
    raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")


def int_minmax_forward(x: Tensor, bits: int) -> Tensor:
    """Per-tensor min-max integer quantization of the original (not rescaled).

    ``n = (x - min) / (max - min)``, ``q = floor(2^b n) - 2^(b-1)``, so values lie in
    ``[-2^(b-1), 2^(b-1)]`` (b=4: [-1, 0, 0.5, 1] -> [-8, 0, 4, 8]). A constant tensor
    (max == min) gives all zeros. ``n`` is formed first, as written, so a span that is
    subnormal stays finite; a span that overflows is computed on halved values.
    """
    _check_bits(bits, 0)
    lo, hi = x.min(), x.max()
    span = hi - lo
    if span <= 0:
        return torch.zeros_like(x)
    if torch.isinf(span):
        x, lo, span = x * 0.5, lo * 0.5, hi * 0.5 - lo * 0.5
    return torch.floor((x - lo) / span * 2.0**bits) - 2.0 ** (bits - 1)


def binary_forward(x: Tensor) -> Tensor:
    """Binarization ``q = sign(x)`` (values -1, 0 for exact zeros, +1)."""
    return torch.sign(x)


def ternary_threshold_and_scale(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel TWN threshold ``delta_c`` and scale ``alpha_c`` (arXiv 1605.04711).

    ``delta_c = 0.7 * mean|W_c|``; ``alpha_c`` is the mean of ``|W|`` over the entries of
    channel ``c`` with ``|W| > delta_c`` (0 for an all-zero channel). Both are shaped
    ``(C, 1, ..., 1)`` to broadcast against ``w``; axis 0 is the output channel.
    """
    flat = w.detach().abs().reshape(w.shape[0], -1).double()  # float64: sums of huge weights stay finite
    delta = 0.7 * flat.mean(dim=1, keepdim=True)
    keep = flat > delta
    count = keep.sum(dim=1, keepdim=True)
    alpha = (flat * keep).sum(dim=1, keepdim=True) / count.clamp_min(1)
    view = (-1,) + (1,) * (w.dim() - 1)
    return delta.to(w.dtype).reshape(view), alpha.to(w.dtype).reshape(view)


def ternary_forward(w: Tensor) -> Tensor:
    """Ternary weights ``q = alpha_c * sign(W) * [|W| > delta_c]`` per output channel.

    See :func:`ternary_threshold_and_scale`; an all-zero filter gives zeros.
    """
    delta, alpha = ternary_threshold_and_scale(w)
    return torch.where(w.abs() > delta, alpha * w.sign(), torch.zeros_like(w))


# --- integer codes -------------------------------------------------------------------------


def fixed_point_codes(
    x: Tensor, i_bits: int, f_bits: int, rounding: str = "nearest", overflow: str = "wrap"
) -> tuple[Tensor, float]:
    """Integer codes ``c`` (int64) and scale ``s`` with ``fixed_point_forward(x, ...) == c * s``.

    Nearest rounding: ``s = 2^-f`` and ``|c| <= 2^(i+f)``. Pow2 rounding: ``s = 2^e`` with
    ``e`` the smallest of ``-f`` and the smallest exponent present, so every value (powers of
    two and the bound ``M``) is an integer multiple of ``s``; a tensor whose magnitudes span
    more than 2^62 has no such int64 codes and raises ``ValueError``.
    """
    q = fixed_point_forward(x, i_bits, f_bits, rounding, overflow)
    if rounding == "pow2":
        nonzero = q[q != 0].abs()
        smallest = int(torch.log2(nonzero.min()).item()) if nonzero.numel() else 0
        scale = 2.0 ** min(-f_bits, smallest)
        if nonzero.numel() and float(nonzero.max()) / scale >= 2.0**62:
            raise ValueError(
                f"pow2 values from 2^{smallest} to {float(nonzero.max())} span more than 2^62: no int64 codes"
            )
    else:
        scale = 2.0**-f_bits
    return torch.round(q / scale).to(torch.int64), scale


def ternary_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """Ternary codes in {-1, 0, 1} (int8) and per-channel scales ``alpha_c``: ``q = c * alpha``."""
    delta, alpha = ternary_threshold_and_scale(w)
    codes = torch.where(w.abs() > delta, w.sign(), torch.zeros_like(w)).to(torch.int8)
    return codes, alpha
