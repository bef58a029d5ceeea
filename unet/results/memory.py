"""Weight memory of the model a run's config describes, at its own width and the paper's.

The memory is the measured size of the model's packed export
(:func:`unet.export.packed.packed_size_bytes`, the file's tensors without its JSON header):
every quantized convolution's weights bit-packed at ``QuantSpec.storage_bits`` (ternary plus one
float32 scale per output channel), the float first block and head, biases and BatchNorm (with
its running statistics) in float32. ``MiB = bytes / 2^20``; the reduction factor is the same
tensors in float32 over the packed size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..export.packed import float32_size_bytes, packed_size_bytes
from ..memory import BITS_PER_MIB, weight_memory_bits

#: The paper's U-Net width (SPEC §4).
PAPER_BASE_CHANNELS = 64


@dataclass(frozen=True)
class Memory:
    """Parameter count and measured packed size of one model.

    ``bits = 8 * packed_size_bytes(model)`` (the packed export's tensors); ``quantized_bits``
    the quantized weights alone at their storage widths; ``float_bits`` the same tensors in
    float32; ``reduction = float_bits / bits``.
    """

    base_channels: int
    params: int
    bits: int
    quantized_bits: int
    float_bits: int

    @property
    def mib(self) -> float:
        """``bits / 2^23``."""
        return self.bits / BITS_PER_MIB

    @property
    def float_mib(self) -> float:
        """``float_bits / 2^23``."""
        return self.float_bits / BITS_PER_MIB

    @property
    def reduction(self) -> float:
        """``float_bits / bits`` (1.0 for a float model)."""
        return self.float_bits / self.bits


_MEMORY_CACHE: dict[tuple, Memory] = {}


def model_memory(cfg: Config | dict[str, Any], base_channels: int | None = None) -> Memory:
    """The weight memory of the U-Net ``cfg`` describes, at ``base_channels`` (default: the
    config's own): the packed export's size of the real model (to the byte, as written)."""
    from ..model import build_model

    width = int(cfg["base_channels"] if base_channels is None else base_channels)
    keys = ("quantization", "activation_i_width", "activation_f_width", "weight_i_width", "weight_f_width",
            "fixed_rounding", "fixed_overflow", "pow2_min_exponent", "activation", "dropout")
    cache_key = (width, *(cfg[k] for k in keys))
    if cache_key not in _MEMORY_CACHE:
        model = build_model(Config({**cfg, "base_channels": width}, getattr(cfg, "sources", {})))
        _MEMORY_CACHE[cache_key] = Memory(width, sum(p.numel() for p in model.parameters()),
                                          8 * packed_size_bytes(model), weight_memory_bits(model)["quantized"],
                                          8 * float32_size_bytes(model))
    return _MEMORY_CACHE[cache_key]
