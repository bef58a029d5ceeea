"""Weight memory of a model at the bit widths its layers really use."""

from __future__ import annotations

from torch import nn

from quantizer import QuantConv2d

BITS_PER_MIB = 8 * 1024 * 1024


def weight_memory_bits(model: nn.Module) -> dict[str, int]:
    """Bits to store every parameter: a quantized convolution's weight at its format's
    :attr:`quantizer.QuantSpec.storage_bits` (the one definition of a stored width), everything
    else (float convolutions, biases, BatchNorm) at 32 bits.

    Returns ``{"quantized": bits, "float": bits, "total": bits}``. Ternary per-channel scales
    are counted as float (one 32-bit value per output channel).
    """
    quantized = 0
    float_bits = 0
    counted: set[int] = set()
    for module in model.modules():
        if isinstance(module, QuantConv2d) and module.weight_quant.kind != "float":
            quantized += module.weight.numel() * module.weight_quant.storage_bits
            if module.weight_quant.kind == "ternary":
                float_bits += module.weight.shape[0] * 32
            counted.add(id(module.weight))
    for param in model.parameters():
        if id(param) not in counted:
            float_bits += param.numel() * 32
    return {"quantized": quantized, "float": float_bits, "total": quantized + float_bits}
