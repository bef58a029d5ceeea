"""Quantizers for quantization-aware training (SPEC §3).

* :mod:`quantizer.functional`: the forward rules as pure tensor functions (and integer codes);
* :mod:`quantizer.autograd`: the same rules with straight-through gradients;
* :mod:`quantizer.modules`: :class:`QuantSpec`, :class:`QuantConv2d`, :class:`ActivationQuantizer`.
"""

from .autograd import binary, fixed_point, int_minmax, ternary
from .modules import FLOAT, ActivationQuantizer, QuantConv2d, QuantSpec
from .options import Kind, Overflow, Rounding

__all__ = [
    "FLOAT",
    "ActivationQuantizer",
    "Kind",
    "Overflow",
    "QuantConv2d",
    "QuantSpec",
    "Rounding",
    "binary",
    "fixed_point",
    "int_minmax",
    "ternary",
]
