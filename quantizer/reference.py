"""The forward rules of docs/SPEC.md §3, written literally, one scalar at a time, in plain Python.

This module is the oracle the tests compare the fast code against (:mod:`quantizer.functional`,
the fused kernels, the ONNX rendering, the integer engine); it is written from the SPEC and calls
none of that code. Every rule works on Python floats (IEEE double): for float32 inputs the
fixed-point rules, binary and INT on exactly representable spans give the float32 answer exactly,
because every intermediate is exact in double. It is slow on purpose: no vectorisation, no
shortcut that needs an argument to be right.

Notation as in the SPEC: ``x`` a value, ``a = |x|``, ``i`` integer bits, ``f`` fractional bits,
``round`` half to even (Python's :func:`round`, like ``torch.round``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "binary",
    "fixed_point_nearest_saturate",
    "fixed_point_nearest_wrap",
    "fixed_point_pow2",
    "int_minmax",
    "pow2_limit",
    "pow2_near_tie",
    "sign",
    "ternary",
    "ternary_tanh",
    "ternary_tanh_beta",
]


def sign(x: float) -> float:
    """``sign(x)``: -1, 0 or +1 (0 for either zero, NaN for NaN), as ``torch.sign``."""
    if math.isnan(x):
        return math.nan
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def _check(i: int, f: int) -> None:
    if i < 0 or f < 0:
        raise ValueError(f"bit widths must be >= 0, got i={i}, f={f}")


def fixed_point_nearest_wrap(x: float, i: int, f: int) -> float:
    """FIXED Qi.f, nearest rounding, ``wrap`` overflow (the paper's formula, the original code):

        q = sign(x) * ( min(floor(a), 2^i - 1) + round((a - floor(a)) * 2^f) / 2^f )

    with the fractional term dropped when ``f = 0``. Integer and fractional parts are quantized
    apart, so the fraction can round up to a whole one (Q0.2: 0.9 -> 1.0), survives above the range
    (Q3.3: 15.99 -> 8.0), and with ``i = 0`` magnitudes wrap modulo 1 (Q0.2: 1.3 -> 0.25).
    ``+-inf`` gives NaN (``a - floor(a)`` is ``inf - inf``) when ``f > 0``."""
    _check(i, f)
    if math.isnan(x):
        return math.nan
    a = abs(x)
    if math.isinf(a):
        return math.nan if f > 0 else sign(x) * (2.0**i - 1)
    whole = float(math.floor(a))
    q = min(whole, 2.0**i - 1)
    if f > 0:
        q += round((a - whole) * 2.0**f) / 2.0**f
    return math.copysign(q, x)


def fixed_point_nearest_saturate(x: float, i: int, f: int) -> float:
    """FIXED Qi.f, nearest rounding, ``saturate`` overflow (the textbook rule, monotone):

        q = sign(x) * min( round(a * 2^f) / 2^f, 2^i - 2^-f )

    Q0.0 maps everything to 0; Q3.3: 15.99, 16.5 and 7.95 -> 7.875; Q4.0: 2.5 -> 2, 2.7 -> 3."""
    _check(i, f)
    if math.isnan(x):
        return math.nan
    a = abs(x)
    limit = 2.0**i - 2.0**-f
    q = limit if math.isinf(a) else min(round(a * 2.0**f) / 2.0**f, limit)
    return math.copysign(q, x)


def pow2_limit(i: int, f: int) -> float:
    """The clamp of the pow2 rule: ``M = (2^(i-1) if i > 0 else 0) + (1 - 2^-f if f > 0 else 0)``
    (0.75 at Q0.2, 0.9375 at Q0.4, 32 at Q6.0, 8.75 at Q4.2, 0 at Q0.0)."""
    _check(i, f)
    return (2.0 ** (i - 1) if i > 0 else 0.0) + (1.0 - 2.0**-f if f > 0 else 0.0)


def fixed_point_pow2(x: float, i: int, f: int, min_exponent: int | None = None) -> float:
    """FIXED Qi.f, pow2 rounding (the original EM code): the nearest power of two in the log domain,
    then the clamp; with the project's bounded exponent, ``q = 0`` where ``e < min_exponent``:

        e = round(log2 a),   p = sign(x) * 2^e   (0 stays 0; 0 if e < min_exponent)
        q = clamp(p, -M, M),   M = pow2_limit(i, f)

    ``min_exponent=None`` is the original, unbounded rule (0.001 -> 2^-10 at any width).
    ``log2`` is evaluated in double here; float32 code rounds it to float32 first, which can
    differ within a few float32 ulps of ``2^(k + 1/2)`` (see :func:`pow2_near_tie`)."""
    limit = pow2_limit(i, f)
    if math.isnan(x):
        return math.nan
    a = abs(x)
    if a == 0:
        return math.copysign(0.0, x)
    if math.isinf(a):
        return math.copysign(limit, x)
    e = round(math.log2(a))
    p = 0.0 if min_exponent is not None and e < min_exponent else math.ldexp(1.0, e)
    return math.copysign(min(p, limit), x)


def pow2_near_tie(x: float, ulps: int = 64) -> bool:
    """Whether ``|x|`` lies within ``ulps`` float32 ulps of a tie ``2^(k + 1/2)`` of the pow2 rule,
    where float32 and double ``log2`` may round ``e`` differently."""
    a = abs(x)
    if not math.isfinite(a) or a == 0:
        return False
    k = math.floor(math.log2(a))
    tie = math.ldexp(math.sqrt(2.0), k)
    return abs(a - tie) <= ulps * math.ldexp(1.0, k - 23)


def int_minmax(xs: Sequence[float], bits: int) -> list[float]:
    """INT with ``b = bits``, min and max over the whole sequence (the whole batch of a layer):

        n = (x - min) / (max - min),   q = floor(2^b * n) - 2^(b-1)

    not scaled back, so values lie in ``[-2^(b-1), 2^(b-1)]`` (b = 4: [-1, 0, 0.5, 1] ->
    [-8, 0, 4, 8]). A constant sequence gives zeros (the original gave NaN). Computed with exact
    rationals, so the answer is the rule's, not one rounding's."""
    from fractions import Fraction

    _check(bits, 0)
    if not xs:
        return []
    lo, hi = Fraction(min(xs)), Fraction(max(xs))
    span = hi - lo
    if span == 0:
        return [0.0 for _ in xs]
    return [float(math.floor(2**bits * (Fraction(x) - lo) / span) - 2 ** (bits - 1)) for x in xs]


def binary(x: float) -> float:
    """BNN: ``q = sign(x)`` with two levels, ``-1`` where ``x < 0`` and ``+1`` elsewhere (zeros of
    either sign and NaN give +1: the project's change from the original's ``sign(0) = 0``)."""
    return -1.0 if x < 0 else 1.0


def ternary(channels: Sequence[Sequence[float]]) -> list[list[float]]:
    """Ternary weights (TWN), one row per output channel ``c`` (the filter's weights flattened):

        delta_c = 0.7 * mean|W_c|
        alpha_c = mean of |W| over the entries of W_c with |W| > delta_c
        q = alpha_c * sign(W) * [|W| > delta_c]

    An all-zero filter gives zeros. Example: [1, -0.5, 0.25, 0] -> delta 0.30625, alpha 0.75,
    q = [0.75, -0.75, 0, 0]."""
    out = []
    for row in channels:
        magnitudes = [abs(float(w)) for w in row]
        delta = 0.7 * math.fsum(magnitudes) / len(magnitudes)
        kept = [m for m in magnitudes if m > delta]
        alpha = math.fsum(kept) / len(kept) if kept else 0.0
        out.append([alpha * sign(float(w)) if abs(float(w)) > delta else 0.0 for w in row])
    return out


def ternary_tanh(x: float, b: float) -> float:
    """The soft ternary activation of TernaryNet, ``b >= 1``:

        y = 0.5 tanh(b (2x - 1)) + 0.5 tanh(b (2x + 1))

    Odd in ``x``, 0 at 0, close to -1, 0, +1 on the three plateaus."""
    return 0.5 * math.tanh(b * (2 * x - 1)) + 0.5 * math.tanh(b * (2 * x + 1))


def ternary_tanh_beta(epoch: int, epochs: int) -> float:
    """``b`` in epoch ``epoch`` of ``epochs`` (1-based): ``3 + 5 (epoch - 1) / (epochs - 1)``,
    3 throughout a one-epoch run."""
    return 3.0 if epochs == 1 else 3.0 + 5.0 * (epoch - 1) / (epochs - 1)
