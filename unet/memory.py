"""Model memory, in one place: what the model's weights occupy at the widths its layers use.

* :func:`weight_memory_bits`: the parameters at their storage widths (quantized convolution
  weights at :attr:`quantizer.QuantSpec.storage_bits`, everything else at 32 bits);
* :func:`storage_plan`, :func:`packed_size_bytes`, :func:`float32_size_bytes`: the tensors the
  packed export stores (:mod:`unet.export.packed` writes them, in this order, at these sizes)
  and their bytes, packed and all in float32;
* :func:`model_memory`: the :class:`Memory` of the U-Net a run's config describes, at its own
  width or the paper's; what the trainer logs (:func:`describe_memory`) and the results report.

The memory is the measured size of the model's packed export (the file's tensors without its
JSON header): every quantized convolution's weights bit-packed at ``QuantSpec.storage_bits``
(ternary plus one float32 scale per output channel), the float first block and head, biases and
BatchNorm (with its running statistics) in float32. ``MiB = bytes / 2^20``; the reduction
factor is the same tensors in float32 over the packed size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quantizer import QuantConv2d, QuantSpec

from .config import Config
from .model import build_model

BITS_PER_MIB = 8 * 1024 * 1024
#: The paper's U-Net width (SPEC §4).
PAPER_BASE_CHANNELS = 64


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


# --- the stored tensors ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of the stored model: its name, shape, encoding (``packed``, ``float32`` or
    ``float16``), its bytes, the quantizer spec of a packed weight and the tensor it comes from
    (the float weight of a packed one, else the tensor itself; None for a ternary ``.scale``)."""

    name: str
    shape: tuple[int, ...]
    encoding: str
    nbytes: int
    spec: QuantSpec | None = None
    source: torch.Tensor | None = None


def storage_plan(model: nn.Module, float16: bool = False) -> list[StoredTensor]:
    """The tensors the stored model holds, in state-dict order, with their encoded sizes: a
    quantized convolution weight bit-packed in ``ceil(numel * storage_bits / 8)`` bytes (ternary:
    followed by ``<name>.scale``, one float32 per output channel), every other state tensor in
    float32 (``float16``: float16); BatchNorm's ``num_batches_tracked`` counters are not stored."""
    packed = {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, QuantConv2d) and module.weight_quant.kind != "float"
    }
    entries: list[StoredTensor] = []
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        shape = tuple(tensor.shape)
        if name in packed:
            spec = packed[name].weight_quant
            entries.append(StoredTensor(name, shape, "packed", math.ceil(tensor.numel() * spec.storage_bits / 8),
                                        spec, packed[name].weight))
            if spec.kind == "ternary":
                entries.append(StoredTensor(f"{name}.scale", (shape[0],), "float32", 4 * shape[0]))
        else:
            encoding = "float16" if float16 else "float32"
            entries.append(StoredTensor(name, shape, encoding, tensor.numel() * (2 if float16 else 4), source=tensor))
    return entries


def packed_size_bytes(model: nn.Module, float16: bool = False) -> int:
    """Bytes of the tensor payload :func:`unet.export.packed.write_packed` writes for ``model``:
    for every quantized weight ``ceil(numel * storage_bits / 8)`` (plus ``4 C`` for ternary
    scales), for every other tensor ``4 numel`` (``2 numel`` with ``float16``).

    The file is this plus a 20-byte preamble and the JSON header (a few kB that depend on the
    run's config text, not on the model): the memory the model itself needs, as stored.
    """
    return sum(entry.nbytes for entry in storage_plan(model, float16))


def float32_size_bytes(model: nn.Module) -> int:
    """Bytes of the same tensors as :func:`packed_size_bytes`, all in float32 (``4 numel``):
    the reference a packed size is compared with."""
    return sum(4 * math.prod(entry.shape) for entry in storage_plan(model) if not entry.name.endswith(".scale"))


def describe_memory(model: nn.Module) -> str:
    """``weight memory X MiB packed (float32: Y MiB)``: :func:`packed_size_bytes` against
    :func:`float32_size_bytes`, for the trainer's ``model:`` log line."""
    packed, full = packed_size_bytes(model), float32_size_bytes(model)
    return f"weight memory {packed / 2**20:.3f} MiB packed (float32: {full / 2**20:.3f} MiB)"


# --- the memory of a configured model ---------------------------------------------------------


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
