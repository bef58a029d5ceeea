"""Weight memory of the model a run's config describes, at its own width and the paper's.

Every quantized convolution's weights at their storage width (FIXED sign-magnitude ``1 + i + f``
bits, INT ``i + 1``, BNN 1, ternary 2 plus one 32-bit scale per output channel); the float
first block and head, all biases and BatchNorm at 32 bits. ``MiB = bits / 2^23``; the reduction
factor is ``32 * params / bits`` (the same model in float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..memory import BITS_PER_MIB, weight_memory_bits

#: The paper's U-Net width (SPEC §4).
PAPER_BASE_CHANNELS = 64


@dataclass(frozen=True)
class Memory:
    """Parameter count and weight storage of one model.

    ``bits`` counts quantized conv weights at their storage width and everything else at 32
    bits; ``float_bits = 32 * params``; ``reduction = float_bits / bits``.
    """

    base_channels: int
    params: int
    bits: int
    quantized_bits: int

    @property
    def float_bits(self) -> int:
        """``32 * params``: the same model stored in float."""
        return 32 * self.params

    @property
    def mib(self) -> float:
        """``bits / 2^23``."""
        return self.bits / BITS_PER_MIB

    @property
    def float_mib(self) -> float:
        """``32 * params / 2^23``."""
        return self.float_bits / BITS_PER_MIB

    @property
    def reduction(self) -> float:
        """``32 * params / bits`` (1.0 for a float model)."""
        return self.float_bits / self.bits


_MEMORY_CACHE: dict[tuple, Memory] = {}


def model_memory(cfg: Config | dict[str, Any], base_channels: int | None = None) -> Memory:
    """The weight memory of the U-Net ``cfg`` describes, at ``base_channels`` (default: the
    config's own), from :func:`unet.memory.weight_memory_bits` on the real model."""
    from ..engine import build_model

    width = int(cfg["base_channels"] if base_channels is None else base_channels)
    keys = ("quantization", "activation_i_width", "activation_f_width", "weight_i_width", "weight_f_width",
            "fixed_rounding", "fixed_overflow", "activation", "dropout")
    cache_key = (width, *(cfg[k] for k in keys))
    if cache_key not in _MEMORY_CACHE:
        model = build_model(Config({**cfg, "base_channels": width}, getattr(cfg, "sources", {})))
        bits = weight_memory_bits(model)
        _MEMORY_CACHE[cache_key] = Memory(width, sum(p.numel() for p in model.parameters()), bits["total"],
                                          bits["quantized"])
    return _MEMORY_CACHE[cache_key]
