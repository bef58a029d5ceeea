"""Layers that use the quantizers: a weight-quantized Conv2d and an activation quantizer.

A :class:`QuantSpec` names one quantizer and its format; layers only compose it, so the
math stays in :mod:`quantizer.functional` and the gradients in :mod:`quantizer.autograd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import autograd as ste
from . import functional as F

KINDS = ("float", "fixed", "int", "binary", "ternary")


@dataclass(frozen=True)
class QuantSpec:
    """One quantizer and its format.

    ``kind``: ``float`` (identity), ``fixed`` (Qi.f with ``rounding`` and ``overflow``),
    ``int`` (min-max, ``i_bits`` bits), ``binary`` (sign), ``ternary`` (TWN, weights only).
    """

    kind: str = "float"
    i_bits: int = 0
    f_bits: int = 0
    rounding: str = "nearest"
    overflow: str = "wrap"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.i_bits < 0 or self.f_bits < 0:
            raise ValueError(f"bit widths must be >= 0, got i={self.i_bits}, f={self.f_bits}")
        if self.rounding not in F.ROUNDINGS:
            raise ValueError(f"rounding must be one of {F.ROUNDINGS}, got {self.rounding!r}")
        if self.overflow not in F.OVERFLOWS:
            raise ValueError(f"overflow must be one of {F.OVERFLOWS}, got {self.overflow!r}")

    def __call__(self, x: Tensor, inplace: bool = False) -> Tensor:
        """Quantize ``x`` (differentiable through the straight-through estimator).

        ``inplace=True`` lets ``fixed``, ``int`` and ``binary`` overwrite ``x`` with the result
        (saving a full-size allocation); ``float`` returns ``x`` and ``ternary`` a new tensor.
        """
        if self.kind == "fixed":
            return ste.fixed_point(x, self.i_bits, self.f_bits, self.rounding, self.overflow, inplace)
        if self.kind == "int":
            return ste.int_minmax(x, self.i_bits, inplace)
        if self.kind == "binary":
            return ste.binary(x, inplace)
        if self.kind == "ternary":
            return ste.ternary(x)
        return x

    def codes(self, x: Tensor) -> tuple[Tensor, Tensor | float]:
        """Integer codes and scale with ``self(x) == codes * scale`` (for export).

        ``fixed``: :func:`quantizer.functional.fixed_point_codes`; ``ternary``: codes in
        {-1, 0, 1} and per-channel scales; ``int`` and ``binary`` are integers already
        (scale 1); ``float`` has no codes and raises ``ValueError``.
        """
        with torch.no_grad():
            if self.kind == "fixed":
                return F.fixed_point_codes(x, self.i_bits, self.f_bits, self.rounding, self.overflow)
            if self.kind == "ternary":
                return F.ternary_codes(x)
            if self.kind in ("int", "binary"):
                return self(x).to(torch.int64), 1.0
        raise ValueError("a float tensor has no integer codes")

    @property
    def storage_bits(self) -> int:
        """Bits to store one value: sign-magnitude ``1 + i + f`` for fixed, ``i + 1`` for int
        (its range ``[-2^(i-1), 2^(i-1)]`` is inclusive), 1 binary, 2 ternary, 32 float."""
        return {
            "fixed": 1 + self.i_bits + self.f_bits,
            "int": self.i_bits + 1,
            "binary": 1,
            "ternary": 2,
        }.get(self.kind, 32)

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

    def quantized_weight(self) -> Tensor:
        """The weight as the convolution sees it: ``weight_quant(weight)``, in float32 also under autocast."""
        return quantize_float32(self.weight_quant, self.weight)

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
