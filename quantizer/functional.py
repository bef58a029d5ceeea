"""Forward rules of every quantizer, as pure tensor functions (SPEC §3).

Nothing here tracks gradients (the forward rules run under ``torch.no_grad``):
:mod:`quantizer.autograd` wraps them with their straight-through backward passes.

Speed: the rules run on every weight and activation of every training step, so each makes at
most two fresh tensors and works in place on them (no chain of full-size temporaries); the
rewritten formulas are exact rewrites of SPEC §3, value for value. With ``inplace=True`` a
rule overwrites its input (the activation quantizers of the U-Net do, on the fresh BatchNorm
output), which saves the allocation of a full-size output tensor.

Notation: ``i`` integer bits, ``f`` fractional bits, ``round`` is round-half-to-even
(``torch.round``), ``sign(0) = 0`` (except in :func:`binary_forward`, where 0 gives +1).

Dense float32 CPU tensors take the fused one-pass kernels of :mod:`quantizer.native` where
they load (same values, bit for bit); the PyTorch code below is the rule everywhere else.

Each rule also has a ``*_codes`` form returning the integer codes ``c`` and the scale ``s``
of the quantized tensor, with ``q == c * s`` exactly; a hardware export reads these.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from . import native
from .options import Overflow, Rounding

#: The accepted ``rounding`` and ``overflow`` strings (:class:`Rounding`, :class:`Overflow`).
ROUNDINGS = Rounding.values()
OVERFLOWS = Overflow.values()


def _check_bits(i_bits: int, f_bits: int) -> None:
    if int(i_bits) != i_bits or int(f_bits) != f_bits or i_bits < 0 or f_bits < 0:
        raise ValueError(f"bit widths must be integers >= 0, got i={i_bits}, f={f_bits}")


def _trunc_(t: Tensor) -> Tensor:
    """``t.trunc_()``, exactly, through ``div_(1, rounding_mode="trunc")``: on CPU (torch 2.x,
    AVX512) that kernel is vectorized and about 6x faster than ``trunc_``."""
    return t.div_(1.0, rounding_mode="trunc")


def _flat(x: Tensor) -> Tensor:
    """All elements of ``x`` as a 1-D tensor, a view when ``x`` is dense (contiguous or
    channels_last), else a copy.

    Full reductions over a 4-D tensor take a slow multi-dimensional path on CPU (torch 2.13:
    ``aminmax`` of a 5x64x200x200 activation 55 ms against 2.2 ms on the flat view, one thread).
    """
    if x.is_contiguous():
        return x.view(-1)
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).view(-1)
    return x.reshape(-1)


def _aminmax(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.aminmax(x)`` (0-d min and max, NaN if any NaN), through the fast 1-D reduction."""
    return torch.aminmax(_flat(x))


def _kernel_takes(scale: float, limit: float) -> bool:
    """Whether a grid ``scale`` and a clamp ``limit`` are finite as float32, as the kernels take them."""
    return scale < 2.0**127 and limit < 2.0**128


def single_pass_rule(spec_kind: str, i_bits: int, f_bits: int, rounding: str = "nearest",
                     overflow: str = "wrap", pow2_min_exponent: int | None = None) -> native.PostOp | None:
    """The rule as a post-op of a fused kernel pass (:func:`quantizer.native.relu_bn`) where it
    rounds each value on its own (pow2 with an exponent bound, binary, saturate, wrap with
    ``f = 0``) and the kernels take its format; None for the others (INT and wrap with ``f > 0``
    need the tensor's range first; ``float`` and ``ternary`` have no such rule)."""
    if spec_kind == "binary":
        return native.post_binary()
    if spec_kind != "fixed":
        return None
    if rounding == "pow2":
        plan = None if pow2_min_exponent is None else native.pow2_plan(pow2_limit(i_bits, f_bits), pow2_min_exponent)
        return None if plan is None else native.post_pow2(plan)
    scale = 2.0**f_bits
    if overflow == "saturate":
        limit = 2.0**i_bits - 1.0 / scale
        return native.post_nearest_clamp(scale, limit) if _kernel_takes(scale, limit) else None
    limit = 2.0**i_bits - 1
    return native.post_clamp_trunc(limit) if f_bits == 0 and _kernel_takes(1.0, limit) else None


def _inside_integer_range(x: Tensor, bound: float, total_bits: int,
                          value_range: tuple[float, float] | None = None) -> bool:
    """Whether every ``|x| < bound`` (False for NaN) and ``x 2^f`` cannot overflow ``x``'s dtype;
    ``value_range``: ``x``'s known (min, max)."""
    if x.numel() == 0 or 2.0**total_bits >= torch.finfo(x.dtype).max:
        return False
    if value_range is not None or native.applies(x):
        found = value_range if value_range is not None else native.minmax(x)  # None for NaN
        return found is not None and max(-found[0], found[1]) < bound
    lo, hi = _aminmax(x)
    return bool(torch.maximum(-lo, hi) < bound)


@torch.no_grad()
def fixed_point_nearest_wrap(x: Tensor, i_bits: int, f_bits: int, inplace: bool = False, *,
                             value_range: tuple[float, float] | None = None) -> Tensor:
    """Sign-magnitude Qi.f of the original GM/NIH code (and the paper's formula).

    With ``a = |x|``::

        q = sign(x) * ( min(floor(a), 2^i - 1) + round((a - floor(a)) * 2^f) / 2^f )

    and the fractional term is 0 when ``f = 0``. The integer and fractional parts are
    quantized separately, so the fraction may round up to 1 (0.9 -> 1.0 at Q0.2), the
    fraction survives above the range (Q3.3: 15.99 -> 8.0) and with ``i = 0`` magnitudes
    wrap modulo 1 (Q0.2: 1.3 -> 0.25). Largest magnitude ``2^i``.

    ``inplace=True`` writes the result into ``x`` (and returns it). ``value_range``: ``(min(x),
    max(x))`` when the caller already has it (no NaN in ``x``), which saves a pass.
    """
    _check_bits(i_bits, f_bits)
    # Computed with the sign kept: sign(x) floor|x| = trunc(x) and sign(x) (|x| - floor|x|) =
    # frac(x) = x - trunc(x), both exact, and round (half to even) and the clamp are odd.
    limit = 2.0**i_bits - 1
    fused = native.applies(x)
    if f_bits == 0:
        # the integer limit commutes with truncation: trunc(clamp(x, -L, L)) (also for +-inf)
        if fused and _kernel_takes(1.0, limit):
            return native.clamp_trunc(x, native.output_for(x, inplace), limit)
        q = x.clamp_(-limit, limit) if inplace else torch.clamp(x, -limit, limit)
        return _trunc_(q)
    scale = 2.0**f_bits
    if _inside_integer_range(x, limit + 1, i_bits + f_bits, value_range):
        # No integer part is clamped, and trunc(x) 2^f is an even integer (f >= 1), so with
        # half-to-even rounding trunc(x) + round(frac(x) 2^f) / 2^f == round(x 2^f) / 2^f exactly.
        if fused:
            return native.nearest(x, native.output_for(x, inplace), scale, None)
        q = x.mul_(scale) if inplace else torch.mul(x, scale)
        return q.round_().div_(scale)
    if fused and _kernel_takes(scale, limit):
        return native.wrap(x, native.output_for(x, inplace), scale, limit)
    frac = torch.frac(x)  # NaN for +-inf, as (a - floor(a)) in the formula
    q = x.sub_(frac) if inplace else torch.sub(x, frac)  # trunc(x), exactly
    frac.mul_(scale).round_().div_(scale)
    return q.clamp_(-limit, limit).add_(frac)


@torch.no_grad()
def fixed_point_nearest_saturate(x: Tensor, i_bits: int, f_bits: int, inplace: bool = False) -> Tensor:
    """Textbook sign-magnitude Qi.f: ``q = sign(x) * min(round(|x| 2^f) / 2^f, 2^i - 2^-f)``.

    Monotone, no wrap-around; the grid is ``2^-f`` and the largest magnitude
    ``2^i - 2^-f`` (so Q0.0 maps everything to 0). ``inplace=True`` writes into ``x``.
    """
    _check_bits(i_bits, f_bits)
    scale = 2.0**f_bits
    limit = 2.0**i_bits - 1.0 / scale
    # round and the clamp are odd: sign(x) min(round(|x| s) / s, L) = clamp(round(x s) / s, -L, L)
    if native.applies(x) and _kernel_takes(scale, limit):
        return native.nearest(x, native.output_for(x, inplace), scale, limit)
    q = x.mul_(scale) if inplace else torch.mul(x, scale)
    return q.round_().div_(scale).clamp_(-limit, limit)


def pow2_limit(i_bits: int, f_bits: int) -> float:
    """Clamp bound of the power-of-two rounding: ``M = [2^(i-1) if i>0] + [1 - 2^-f if f>0]``."""
    _check_bits(i_bits, f_bits)
    whole = 2.0 ** (i_bits - 1) if i_bits > 0 else 0.0
    frac = 1.0 - 2.0**-f_bits if f_bits > 0 else 0.0
    return whole + frac


@torch.no_grad()
def fixed_point_pow2(
    x: Tensor, i_bits: int, f_bits: int, inplace: bool = False, min_exponent: int | None = None
) -> Tensor:
    """Power-of-two rounding of the original EM code, with a bounded exponent range.

    ``p = sign(x) * 2^e`` with ``e = round(log2 |x|)`` (0 stays 0); ``p = 0`` when
    ``e < min_exponent`` (flush to zero; ``None``: no bound, the original rule, where
    0.001 -> 2^-10 at any width); then clamped to ``[-M, M]`` with ``M = pow2_limit(i, f)``.
    The magnitudes are :func:`pow2_levels`. ``inplace=True`` writes into ``x``.
    """
    limit = pow2_limit(i_bits, f_bits)
    if min_exponent is not None and native.applies(x):
        plan = native.pow2_plan(limit, int(min_exponent))
        if plan is not None:
            return native.pow2(x, native.output_for(x, inplace), plan)
    p = torch.abs(x)  # |x| = 0: log2 = -inf, 2^-inf = 0
    # With M = 2^k, min(2^round(log2 a), M) = 2^round(log2 min(a, M)) (round and log2 are
    # monotone, round(log2 2^k) = k), so the clamp to M can go into the same pass as the floor
    # below, before log2; when k >= m the flush (e < m) sees the same answer for min(e, k).
    mantissa, exponent = math.frexp(limit)
    power_limit = mantissa == 0.5 and (min_exponent is None or exponent - 1 >= min_exponent)
    top = limit if power_limit else None
    if min_exponent is not None:
        # torch's CPU log2 takes a slow path on 0 and subnormals (10x and 27x per element; a ReLU
        # network's activations are up to half zeros). Every a < 2^(m-1) has round(log2 a) <=
        # m - 1 < m and is flushed, and so is 2^(m-1) itself: raising them to 2^(m-1) keeps
        # every result and keeps log2 on normal numbers (for m > -126). NaN stays NaN.
        p.clamp_(2.0 ** (min_exponent - 1), top)
    elif top is not None:
        p.clamp_max_(top)
    p.log2_().round_()  # the exponent e, an integer (or -inf, +inf, NaN)
    if min_exponent is not None:
        # flush in the exponent domain, one in-place pass and no mask: e <= m - 1/2 <=> e < m
        # for integer e, and -inf (2^-inf = 0) is what flushing to 0 means; NaN stays NaN
        torch.threshold_(p, min_exponent - 0.5, -math.inf)
    p.exp2_()
    if not power_limit:
        p.clamp_max_(limit)
    return torch.copysign(p, x, out=x) if inplace else p.copysign_(x)


def _round_pow2_(t: Tensor) -> Tensor:
    """``t = 2^round(log2 t)`` in place (``round`` half to even), for ``t >= 0``; returns ``t``.

    0 -> 0, +inf -> +inf, NaN -> NaN; subnormals round to subnormal powers of two.

    Why not the float's bits: the result is ``2^e`` or ``2^(e+1)`` for ``t = m 2^e``, but where
    the switch happens is not the fixed mantissa ``sqrt(2)``: ``log2`` is rounded to float32
    before ``round``, so mantissas within an ulp of ``e + 0.5`` become exact ties, which go to
    the even exponent. The switch point is ``(sqrt(2) - 1) 2^23 = 3474675.14`` ulps from ``2^e``
    only for ``e = 0``; it moves by up to 32 ulps with ``|e|`` and the parity of ``e``
    (tests/quantizer/test_rewrites_change_no_value.py checks this rule against every exponent). A bit
    rule bit-equal to this needs a per-exponent threshold, i.e. a gather (97 ms for 12.8 M
    values against 20 ms for ``log2``/``round``/``exp2``, one thread); a constant threshold
    (two in-place integer passes, 4 ms) differs on up to 32 mantissas per binade. So the float
    kernels stay.
    """
    return t.log2_().round_().exp2_()


def pow2_levels(i_bits: int, f_bits: int, min_exponent: int) -> list[float]:
    """The magnitudes :func:`fixed_point_pow2` can return, ascending: ``0``, every ``2^e``
    with ``min_exponent <= e`` and ``2^e <= M``, and ``M = pow2_limit(i, f)`` itself when it
    is not one of those powers (an input rounding to a power above ``M`` is clamped to ``M``).

    ``M = 0`` (Q0.0) gives ``[0.0]``. The signed values are ``±`` these (a signed zero is 0).
    """
    limit = pow2_limit(i_bits, f_bits)
    if limit == 0:
        return [0.0]
    levels = [0.0]
    e = min_exponent
    while 2.0**e <= limit:
        levels.append(2.0**e)
        e += 1
    if levels[-1] != limit:
        levels.append(limit)
    return levels


def fixed_point_forward(
    x: Tensor,
    i_bits: int,
    f_bits: int,
    rounding: str = "nearest",
    overflow: str = "wrap",
    inplace: bool = False,
    pow2_min_exponent: int | None = None,
) -> Tensor:
    """Dispatch to the FIXED variant named by ``rounding`` and ``overflow``.

    ``rounding="pow2"`` ignores ``overflow`` (it always clamps to ``±M``) and flushes
    magnitudes whose rounded exponent is below ``pow2_min_exponent`` to 0 (``None``: no
    bound); nearest rounding ignores ``pow2_min_exponent``. ``inplace=True`` writes the
    result into ``x``.
    """
    if rounding == Rounding.POW2:
        return fixed_point_pow2(x, i_bits, f_bits, inplace, pow2_min_exponent)
    if rounding != Rounding.NEAREST:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if overflow == Overflow.WRAP:
        return fixed_point_nearest_wrap(x, i_bits, f_bits, inplace)
    if overflow == Overflow.SATURATE:
        return fixed_point_nearest_saturate(x, i_bits, f_bits, inplace)
    raise ValueError(f"overflow must be one of {OVERFLOWS}, got {overflow!r}")


@torch.no_grad()
def int_minmax_forward(x: Tensor, bits: int, inplace: bool = False, *,
                       value_range: tuple[float, float] | None = None) -> Tensor:
    """Per-tensor min-max integer quantization of the original (not rescaled).

    ``n = (x - min) / (max - min)``, ``q = floor(2^b n) - 2^(b-1)``, so values lie in
    ``[-2^(b-1), 2^(b-1)]`` (b=4: [-1, 0, 0.5, 1] -> [-8, 0, 4, 8]). A constant tensor
    (max == min) gives all zeros. ``n`` is formed first, as written, so a span that is
    subnormal stays finite; a span that overflows is computed on halved values.
    ``inplace=True`` writes into ``x``. ``value_range``: ``(min(x), max(x))`` when the caller
    already has it (no NaN in ``x``), which saves a pass.
    """
    _check_bits(bits, 0)
    if native.applies(x):
        fused = _int_minmax_fused(x, bits, inplace, value_range)
        if fused is not None:
            return fused
    lo, hi = _aminmax(x)  # one pass
    span = hi - lo
    if span <= 0:
        return x.zero_() if inplace else torch.zeros_like(x)
    # floor((x - lo) / span * 2^b) - 2^(b-1), in place. With span 2^-b a normal float,
    # (x - lo) / (span 2^-b) == ((x - lo) / span) 2^b exactly (scaling by 2^b commutes with
    # rounding); where the quotient is subnormal both sides are at most tiny 2^b <= 1/2 and
    # floor to 0. So one division replaces the division and the multiplication.
    tiny = torch.finfo(x.dtype).tiny
    one_division = 2.0**bits * tiny <= 0.5
    if torch.isinf(span):
        lo, span = lo * 0.5, hi * 0.5 - lo * 0.5
        q = x.mul_(0.5) if inplace else torch.mul(x, 0.5)
        q.sub_(lo)
    else:
        q = x.sub_(lo) if inplace else torch.sub(x, lo)
    step = span * 2.0**-bits
    if one_division and step >= tiny:
        q.div_(step)
    else:
        q.div_(span).mul_(2.0**bits)
    return q.floor_().sub_(2.0 ** (bits - 1))


def _int_minmax_fused(x: Tensor, bits: int, inplace: bool,
                      value_range: tuple[float, float] | None = None) -> Tensor | None:
    """:func:`int_minmax_forward` through the kernels, the same float32 operations (``span``,
    ``step`` as float32 scalars), or None where the PyTorch code must decide (a NaN, a span that
    overflows, a step below the normal range)."""
    found = value_range if value_range is not None else native.minmax(x)
    if found is None:
        return None
    lo, hi = np.float32(found[0]), np.float32(found[1])
    with np.errstate(over="ignore", invalid="ignore"):  # inf - inf: NaN, left to the PyTorch code
        span = hi - lo
    if span <= 0:
        return x.zero_() if inplace else torch.zeros_like(x)
    tiny = float(np.finfo(np.float32).tiny)
    if not np.isfinite(span) or 2.0**bits * tiny > 0.5:
        return None
    step = span * np.float32(2.0**-bits)  # exact (a power of two) unless below the normal range
    if step < tiny:
        return None
    return native.int_minmax(x, native.output_for(x, inplace), float(lo), float(step), 2.0 ** (bits - 1))


@torch.no_grad()
def binary_forward(x: Tensor, inplace: bool = False) -> Tensor:
    """Binarization to two levels: ``q = -1`` where ``x < 0``, else ``+1``.

    Exact zeros (``+0`` and ``-0``) give ``+1``, so a binary value always fits one bit (the
    original's ``sign(0) = 0`` was a third level). NaN gives ``+1`` as well
    (``torch.sign(NaN) = 0``). ``inplace`` writes into ``x``.
    """
    if native.applies(x):
        return native.binary(x, native.output_for(x, inplace), None)
    q = x.sign_() if inplace else torch.sign(x)
    # sign(sign(x) + 1/2) maps -1, 0, 1 to -1, 1, 1 in two cheap in-place passes
    return q.add_(0.5).sign_()


@torch.no_grad()
def binary_forward_with_mask(x: Tensor, inplace: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`binary_forward` and the mask ``[-1 <= x <= 1]`` (bool, ``x``'s layout; False for
    NaN) that the BNN gradient keeps, in one pass where the fused kernels apply."""
    if native.applies(x):
        inside = torch.empty_like(x, dtype=torch.bool, memory_format=torch.preserve_format)
        return native.binary(x, native.output_for(x, inplace), inside), inside
    inside = torch.ge(x, -1.0).logical_and_(torch.le(x, 1.0))
    return binary_forward(x, inplace), inside


def _ternary_parts(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``|W|`` (detached, ``w``'s layout) and ``delta_c``, ``alpha_c`` (see below)."""
    a = w.detach().abs()
    # float64 (sums of huge weights stay finite), channel-major: one cast-and-copy
    flat = a.to(torch.float64, memory_format=torch.contiguous_format, copy=True).reshape(w.shape[0], -1)
    delta = 0.7 * flat.mean(dim=1, keepdim=True)
    keep = flat > delta
    count = keep.sum(dim=1, keepdim=True)
    alpha = flat.mul_(keep).sum(dim=1, keepdim=True) / count.clamp_min(1)
    view = (-1,) + (1,) * (w.dim() - 1)
    return a, delta.to(w.dtype).reshape(view), alpha.to(w.dtype).reshape(view)


def ternary_threshold_and_scale(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel TWN threshold ``delta_c`` and scale ``alpha_c`` (arXiv 1605.04711).

    ``delta_c = 0.7 * mean|W_c|``; ``alpha_c`` is the mean of ``|W|`` over the entries of
    channel ``c`` with ``|W| > delta_c`` (0 for an all-zero channel). Both are shaped
    ``(C, 1, ..., 1)`` to broadcast against ``w``; axis 0 is the output channel.
    """
    _, delta, alpha = _ternary_parts(w)
    return delta, alpha


@torch.no_grad()
def ternary_forward(w: Tensor) -> Tensor:
    """Ternary weights ``q = alpha_c * sign(W) * [|W| > delta_c]`` per output channel.

    See :func:`ternary_threshold_and_scale`; an all-zero filter gives zeros.
    """
    a, delta, alpha = _ternary_parts(w)
    return torch.where(a > delta, w.sign().mul_(alpha), 0.0)


# --- integer codes -------------------------------------------------------------------------


def fixed_point_codes(
    x: Tensor,
    i_bits: int,
    f_bits: int,
    rounding: str = "nearest",
    overflow: str = "wrap",
    pow2_min_exponent: int | None = None,
) -> tuple[Tensor, float]:
    """Integer codes ``c`` (int64) and scale ``s`` with ``fixed_point_forward(x, ...) == c * s``.

    Nearest rounding: ``s = 2^-f`` and ``|c| <= 2^(i+f)`` (wrap reaches ``2^(i+f)`` when
    ``f > 0``; saturate stops at ``2^(i+f) - 1``). Pow2 rounding with an exponent bound:
    the fixed scale ``s = 2^min(pow2_min_exponent, -f)``, on which every level (the powers of
    two and ``M``) is an integer; without a bound (``None``, the original rule) ``s = 2^e``
    with ``e`` the smallest of ``-f`` and the smallest exponent present (data dependent).
    Codes that would not fit int64 (a span beyond 2^62) raise ``ValueError``.
    The packed format stores pow2 values as :func:`pow2_exponent_codes` instead.
    """
    q = fixed_point_forward(x, i_bits, f_bits, rounding, overflow, pow2_min_exponent=pow2_min_exponent)
    if rounding == "pow2":
        nonzero = q[q != 0].abs()
        if pow2_min_exponent is not None:  # every level, whatever the data
            smallest, largest = pow2_min_exponent, pow2_limit(i_bits, f_bits)
        else:
            smallest = int(torch.log2(nonzero.min()).item()) if nonzero.numel() else 0
            largest = float(nonzero.max()) if nonzero.numel() else 0.0
        scale = 2.0 ** min(-f_bits, smallest)
        if largest / scale >= 2.0**62:
            raise ValueError(f"pow2 values from 2^{smallest} to {largest} span more than 2^62: no int64 codes")
    else:
        scale = 2.0**-f_bits
    return torch.round(q / scale).to(torch.int64), scale


def pow2_exponent_codes(x: Tensor, i_bits: int, f_bits: int, pow2_min_exponent: int) -> Tensor:
    """Signed level indices of the pow2 quantization of ``x`` (int64), as the packed format
    stores them: ``c = sign(q) * k`` where ``|q| = pow2_levels(i, f, pow2_min_exponent)[k]``.

    ``0 <= |c| <= len(levels) - 1``, so ``c`` fits ``1 + ceil(log2 len(levels))`` bits
    sign-magnitude. Decode: ``q = sign(c) * levels[|c|]``. NaN inputs raise ``ValueError``.
    """
    q = fixed_point_pow2(x.detach(), i_bits, f_bits, False, pow2_min_exponent)
    if bool(torch.isnan(q).any()):
        raise ValueError("NaN has no pow2 level index")
    levels = torch.tensor(pow2_levels(i_bits, f_bits, pow2_min_exponent), dtype=q.dtype, device=q.device)
    index = torch.searchsorted(levels, q.abs().contiguous())  # exact: |q| is one of the levels
    return (index * torch.sign(q).to(torch.int64)).to(torch.int64)


def ternary_codes(w: Tensor) -> tuple[Tensor, Tensor]:
    """Ternary codes in {-1, 0, 1} (int8) and per-channel scales ``alpha_c``: ``q = c * alpha``."""
    delta, alpha = ternary_threshold_and_scale(w)
    codes = torch.where(w.abs() > delta, w.sign(), torch.zeros_like(w)).to(torch.int8)
    return codes, alpha
