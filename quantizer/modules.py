"""Layers that use the quantizers: a weight-quantized Conv2d and an activation quantizer.

A :class:`QuantSpec` names one quantizer and its format; layers only compose it, so the
math stays in :mod:`quantizer.functional` and the gradients in :mod:`quantizer.autograd`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import autograd as ste
from . import functional as F
from .options import Kind, Rounding

#: The accepted ``kind`` strings (:class:`quantizer.options.Kind`).
KINDS = Kind.values()

#: Default smallest exponent of pow2 rounding (``pow2_min_exponent``): magnitudes that round to
#: ``2^e`` with ``e`` below it are flushed to 0. Chosen by measurement on the EM pow2 quick start
#: (docs/results.md, "Memory, and the paper's 8x").
DEFAULT_POW2_MIN_EXPONENT = -8
#: Range accepted for ``pow2_min_exponent`` (float32 normal exponents).
POW2_MIN_EXPONENT_RANGE = (-126, 126)


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer and its format.

    ``kind``: ``float`` (identity), ``fixed`` (Qi.f with ``rounding`` and ``overflow``; pow2
    rounding flushes magnitudes below ``2^pow2_min_exponent`` to 0), ``int`` (min-max,
    ``i_bits`` bits), ``binary`` (-1 / +1), ``ternary`` (TWN, weights only).
    """

    kind: str = "float"
    i_bits: int = 0
    f_bits: int = 0
    rounding: str = "nearest"
    overflow: str = "wrap"
    pow2_min_exponent: int = DEFAULT_POW2_MIN_EXPONENT

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.i_bits < 0 or self.f_bits < 0:
            raise ValueError(f"bit widths must be >= 0, got i={self.i_bits}, f={self.f_bits}")
        if self.rounding not in F.ROUNDINGS:
            raise ValueError(f"rounding must be one of {F.ROUNDINGS}, got {self.rounding!r}")
        if self.overflow not in F.OVERFLOWS:
            raise ValueError(f"overflow must be one of {F.OVERFLOWS}, got {self.overflow!r}")
        low, high = POW2_MIN_EXPONENT_RANGE
        e = self.pow2_min_exponent
        if isinstance(e, bool) or not isinstance(e, int) or not low <= e <= high:
            raise ValueError(f"pow2_min_exponent must be an integer in [{low}, {high}], got {e!r}")

    @property
    def is_pow2(self) -> bool:
        """FIXED with power-of-two rounding."""
        return self.kind == Kind.FIXED and self.rounding == Rounding.POW2

    def __call__(self, x: Tensor, inplace: bool = False) -> Tensor:
        """Quantize ``x`` (differentiable through the straight-through estimator).

        ``inplace=True`` lets ``fixed``, ``int`` and ``binary`` overwrite ``x`` with the result
        (saving a full-size allocation); ``float`` returns ``x`` and ``ternary`` a new tensor.
        """
        if self.kind == Kind.FIXED:
            return ste.fixed_point(x, self.i_bits, self.f_bits, self.rounding, self.overflow, inplace,
                                   self.pow2_min_exponent)
        if self.kind == Kind.INT:
            return ste.int_minmax(x, self.i_bits, inplace)
        if self.kind == Kind.BINARY:
            return ste.binary(x, inplace)
        if self.kind == Kind.TERNARY:
            return ste.ternary(x)
        return x

    def codes(self, x: Tensor) -> tuple[Tensor, Tensor | float]:
        """Integer codes and scale with ``self(x) == codes * scale`` (for export).

        ``fixed``: :func:`quantizer.functional.fixed_point_codes` (pow2: the fixed scale
        ``2^min(pow2_min_exponent, -f)``); ``ternary``: codes in {-1, 0, 1} and per-channel
        scales; ``int`` and ``binary`` are integers already (scale 1); ``float`` has no codes
        and raises ``ValueError``.
        """
        with torch.no_grad():
            if self.kind == Kind.FIXED:
                return F.fixed_point_codes(x, self.i_bits, self.f_bits, self.rounding, self.overflow,
                                           self.pow2_min_exponent)
            if self.kind == Kind.TERNARY:
                return F.ternary_codes(x)
            if self.kind in (Kind.INT, Kind.BINARY):
                return self(x).to(torch.int64), 1.0
        raise ValueError("a float tensor has no integer codes")

    def pow2_levels(self) -> list[float]:
        """The magnitudes a pow2 spec can produce (:func:`quantizer.functional.pow2_levels`)."""
        return F.pow2_levels(self.i_bits, self.f_bits, self.pow2_min_exponent)

    def storage_codes(self, x: Tensor) -> tuple[Tensor, Tensor | float]:
        """The signed integer codes (int64) a storage format keeps, and their scale.

        Every code fits :attr:`storage_bits` bits sign-magnitude, ``|c| <= 2^(bits-1) - 1``
        (binary: ``c`` in {-1, +1}, one bit). As :meth:`codes`, except pow2, whose codes are
        level indices (:func:`quantizer.functional.pow2_exponent_codes`; scale 1.0).
        :meth:`decode` inverts it.
        """
        if self.is_pow2:
            with torch.no_grad():
                return F.pow2_exponent_codes(x, self.i_bits, self.f_bits, self.pow2_min_exponent), 1.0
        codes, scale = self.codes(x)
        return codes.to(torch.int64), scale

    def decode(self, codes: Tensor, scale: Tensor | float) -> Tensor:
        """The quantized float32 values of :meth:`storage_codes`: ``codes * scale``, or for pow2
        ``sign(c) * pow2_levels()[|c|]`` (exact: every level is a float32 number)."""
        codes = codes.to(torch.int64)
        if self.is_pow2:
            levels = torch.tensor(self.pow2_levels(), dtype=torch.float32, device=codes.device)
            return levels[codes.abs()] * torch.sign(codes).to(torch.float32)
        return codes.to(torch.float32) * scale

    def float_for(self, q: Tensor) -> Tensor:
        """A float tensor ``w`` that this spec quantizes to ``q`` exactly (``self(w) == q``),
        for ``q`` a quantized tensor of this spec: a reader rebuilds the float weights from it.

        ``q`` itself except where re-quantizing ``q`` would move it: nearest wrap with
        ``f > 0`` maps ``±2^i`` to ``2^i - 1``, so those become ``±(2^i - 2^-(f+1))`` (which
        round up to ``2^i``); pow2 maps a clamp value ``M`` that is not a power of two (or below
        ``2^pow2_min_exponent``) elsewhere, so ``±M`` becomes ``±2^max(min_exponent,
        floor(log2 M) + 1)``, which clamps to ``M``. Every other spec is idempotent.
        """
        w = q.detach().clone()
        if self.kind != "fixed":
            return w
        if self.is_pow2:
            limit = F.pow2_limit(self.i_bits, self.f_bits)
            if limit > 0:
                above = 2.0 ** max(self.pow2_min_exponent, math.floor(math.log2(limit)) + 1)
                w = torch.where(w.abs() == limit, torch.copysign(torch.full_like(w, above), w), w)
            return w
        if self.overflow == "wrap" and self.f_bits > 0:
            top = 2.0**self.i_bits
            inside = top - 2.0 ** -(self.f_bits + 1)
            w = torch.where(w.abs() == top, torch.copysign(torch.full_like(w, inside), w), w)
        return w

    @property
    def storage_bits(self) -> int:
        """Bits per value of a real encoding (the one definition; the memory figures, the
        results table and the packed export use it), sign-magnitude unless noted:

        * FIXED nearest saturate: ``1 + i + f`` (``|c| <= 2^(i+f) - 1``);
        * FIXED nearest wrap: ``2 + i + f`` when ``f > 0``: the fraction can round up to a whole
          one, so ``|c|`` reaches ``2^(i+f)`` (Q0.4: 1.0, code 16; 33 levels do not fit 5 bits,
          and saturating that code would change the model); ``1 + i`` when ``f = 0`` (truncation);
        * FIXED pow2: ``1 + ceil(log2 L)``, sign and level index, ``L`` the number of magnitudes
          :meth:`pow2_levels` (0, the powers ``2^e`` from ``2^pow2_min_exponent`` to ``M`` and
          ``M`` itself);
        * INT ``b``: ``b + 1`` (its range ``[-2^(b-1), 2^(b-1)]`` is inclusive);
        * binary: 1 (-1 / +1); ternary: 2 (plus one float32 scale per output channel);
        * float: 32.
        """
        if self.kind == "fixed":
            if self.is_pow2:
                return 1 + (len(self.pow2_levels()) - 1).bit_length()
            if self.overflow == "wrap" and self.f_bits > 0:
                return 2 + self.i_bits + self.f_bits
            return 1 + self.i_bits + self.f_bits
        return {"int": self.i_bits + 1, "binary": 1, "ternary": 2}.get(self.kind, 32)

    def __str__(self) -> str:
        if self.kind == "fixed":
            suffix = ", pow2" if self.rounding == "pow2" else ""
            suffix += ", saturate" if self.rounding == "nearest" and self.overflow == "saturate" else ""
            return f"Q{self.i_bits}.{self.f_bits}{suffix}"
        if self.kind == "int":
            return f"INT{self.i_bits}"
        return self.kind


FLOAT = QuantSpec()


def quantize_float32(spec: QuantSpec, x: Tensor, inplace: bool = False) -> Tensor:
    """``spec(x)`` computed in float32: under ``torch.autocast`` the input (a bfloat16 or float16
    activation) is cast to float32 and quantized with autocast off, so the result equals the
    float32 quantizer's on the same values and Qi.f grids stay exact (Q8.8 needs 17 bits). The
    result stays float32 (autocast lowers it again where the next convolution wants it). Without
    autocast, or for ``float``, it is just ``spec(x, inplace)``."""
    if spec.kind == "float" or not torch.is_autocast_enabled(x.device.type):
        return spec(x, inplace)
    with torch.autocast(x.device.type, enabled=False):
        return spec(x.float(), inplace)  # a cast input is a fresh tensor: overwriting it is safe


class QuantConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is quantized by ``weight_quant`` on every forward pass.

    The float weight is the trained parameter (the straight-through gradient reaches it);
    :meth:`quantized_weight` is what the convolution uses. The bias stays float.
    """

    def __init__(self, *args, weight_quant: QuantSpec = FLOAT, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight_quant = weight_quant
        self._cached: tuple[tuple, Tensor, Tensor] | None = None  # key, pinned weight, quantized

    def quantized_weight(self) -> Tensor:
        """The weight as the convolution sees it: ``weight_quant(weight)``, in float32 also under autocast.

        In evaluation mode, when no gradient reaches the weight (``torch.no_grad``, or a frozen
        weight), the result is computed once and reused until the weight changes. The cache is
        keyed on the weight's storage (pinned while cached), layout, dtype, device and version
        counter (bumped by every in-place change: an optimizer step, ``load_state_dict``) and
        on ``weight_quant``; ``train()`` drops it. It holds the same function of
        the same weights, so the values are a fresh call's; the returned tensor is shared, so
        callers must not modify it.
        """
        w = self.weight
        if (self.training or self.weight_quant.kind == "float" or (torch.is_grad_enabled() and w.requires_grad)
                or torch.jit.is_tracing()):
            return quantize_float32(self.weight_quant, w)
        try:
            key = (w.data_ptr(), w._version, w.dtype, w.device, w.shape, w.stride(), self.weight_quant)
        except RuntimeError:  # an inference-mode tensor has no version counter
            return quantize_float32(self.weight_quant, w)
        if self._cached is None or self._cached[0] != key:
            # w.detach() pins the weight's storage, so no other tensor can take its address
            self._cached = (key, w.detach(), quantize_float32(self.weight_quant, w))
        return self._cached[2]

    def train(self, mode: bool = True) -> QuantConv2d:
        """As ``nn.Module.train``; training mode also drops the weight cache (``eval()`` keeps
        it: it is checked against the weight on every use)."""
        if mode:
            self._cached = None
        return super().train(mode)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight={self.weight_quant}"


class ActivationQuantizer(nn.Module):
    """Quantizes activations with ``spec`` (identity for ``float``).

    ``inplace=True`` (as ``nn.ReLU(inplace=True)``) overwrites the input with the quantized
    values, saving the allocation of a full-size tensor per call: use it where the input is a
    fresh tensor that nothing else needs (the U-Net's BatchNorm / Dropout output). Autograd
    raises at backward time if the overwritten input was needed after all.
    """

    def __init__(self, spec: QuantSpec = FLOAT, inplace: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return quantize_float32(self.spec, x, self.inplace)

    def extra_repr(self) -> str:
        return f"{self.spec}, inplace" if self.inplace and self.spec.kind != "float" else str(self.spec)
