"""Integer code formats of the activation quantizers: scale, code bound, codes of values.

An activation quantizer's output ``q`` is held by the integer engine as codes ``c`` with
``q == c * scale``; the scale is fixed per format (data-independent), so codes of different
layers and batches can be added and compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from quantizer import QuantSpec
from quantizer.functional import pow2_limit

#: Smallest power-of-two exponent an activation code can hold when the spec has no
#: ``pow2_min_exponent`` (checkpoints from before that key): smaller magnitudes get code 0.
DEFAULT_POW2_MIN_EXPONENT = -24


@dataclass(frozen=True)
class CodeFormat:
    """How one activation spec's values map to integer codes.

    ``scale``: value of code 1 (a power of two, or 1 for INT and binary); ``max_code``: the
    largest ``|c|`` the format produces; ``levels``: every possible code, sorted (pow2 only:
    its codes are sparse), else None.
    """

    spec: QuantSpec
    scale: float
    max_code: int
    levels: Tensor | None = None

    @property
    def wrap_fraction(self) -> bool:
        """Nearest *wrap* with fractional bits: the only format whose code is not monotone in
        the value (Q3.3: 7.9 -> 7.875 but 8.01 -> 7.0; the fraction keeps cycling above 2^i)."""
        s = self.spec
        return s.kind == "fixed" and s.rounding == "nearest" and s.overflow == "wrap" and s.f_bits > 0


def pow2_min_exponent(spec: QuantSpec) -> int:
    """The spec's ``pow2_min_exponent`` when it has one, else :data:`DEFAULT_POW2_MIN_EXPONENT`."""
    value = getattr(spec, "pow2_min_exponent", None)
    return DEFAULT_POW2_MIN_EXPONENT if value is None else int(value)


def code_format(spec: QuantSpec) -> CodeFormat:
    """The :class:`CodeFormat` of an activation spec.

    * FIXED nearest Qi.f: scale ``2^-f``; ``|c| <= 2^(i+f)`` (wrap: the fraction may round up
      to 1 at the top) or ``2^(i+f) - 1`` (saturate).
    * FIXED pow2: scale ``2^min(e_min, -f)`` with ``e_min`` from :func:`pow2_min_exponent`;
      codes ``0``, ``±2^e / scale`` for ``e_min <= e <= log2 M`` and ``±M / scale``.
    * INT b bits: scale 1, ``|c| <= 2^(b-1)`` (the fake-quant values are the codes).
    * binary: scale 1, codes in {-1, 0, 1} (0 only where ``sign(0) = 0``).

    Raises ValueError for ``float`` and ``ternary`` (no activation codes).
    """
    i, f = spec.i_bits, spec.f_bits
    if spec.kind == "fixed" and spec.rounding == "nearest":
        top = 2 ** (i + f)
        return CodeFormat(spec, 2.0**-f, top if spec.overflow == "wrap" else top - 1)
    if spec.kind == "fixed":
        e_min = pow2_min_exponent(spec)
        scale_exp = min(e_min, -f)
        limit = pow2_limit(i, f)
        if limit < 2.0**e_min:
            raise ValueError(f"{spec}: pow2_min_exponent {e_min} is above the largest magnitude {limit}")
        magnitudes = [2.0**e for e in range(e_min, math.floor(math.log2(limit)) + 1)] + [limit]
        codes = sorted({round(m * 2.0**-scale_exp) for m in magnitudes})
        levels = torch.tensor([-c for c in reversed(codes)] + [0] + codes, dtype=torch.int64)
        return CodeFormat(spec, 2.0**scale_exp, codes[-1], levels)
    if spec.kind == "int":
        return CodeFormat(spec, 1.0, 2 ** (i - 1) if i > 0 else 1)
    if spec.kind == "binary":
        return CodeFormat(spec, 1.0, 1)
    raise ValueError(f"activation quantizer {spec} has no integer codes")


def values_to_codes(q: Tensor, fmt: CodeFormat) -> Tensor:
    """Codes ``trunc(q / scale)`` (int64) of quantized values ``q``.

    Exact for every value of the format; a pow2 magnitude below ``2^e_min`` (which the
    quantizer without ``pow2_min_exponent`` can produce) truncates to code 0, as the
    format flushes it.
    """
    return torch.div(q.double(), fmt.scale, rounding_mode="trunc").to(torch.int64)


def codes_to_values(c: Tensor, fmt: CodeFormat) -> Tensor:
    """Float32 values ``c * scale`` of codes (exact: every code of the format is a float32)."""
    return (c.double() * fmt.scale).float()
