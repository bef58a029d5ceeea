"""The packed model file: every quantized weight at its storage width, the rest in float.

Layout (all integers little-endian)::

    8 bytes   magic b"UNETQPK\\0"
    4 bytes   format version (uint32, FORMAT_VERSION)
    8 bytes   header length H (uint64)
    H bytes   JSON header (UTF-8)
    payload   the tensors, back to back, in header order, each starting on a byte boundary

A quantized convolution weight (``encoding: "packed"``) is stored as signed codes
(:meth:`quantizer.QuantSpec.storage_codes`) in ``bits = QuantSpec.storage_bits`` bits each,
sign-magnitude (the sign bit first, then the magnitude, most significant bit first; binary:
one bit, 1 for +1 and 0 for -1), the values of the C-ordered tensor one after the other and
bit-packed with ``numpy.packbits`` (big bit order, the last byte zero-padded):
``ceil(numel * bits / 8)`` bytes. Its value is ``codes * scale`` (FIXED nearest: scale
``2^-f``; INT and binary: 1; ternary: a float32 scale per output channel stored as the next
tensor ``<name>.scale``) or, for pow2, ``sign(c) * levels[|c|]`` with the header's ``levels``.
Every other tensor of the state (the float first block and head, biases, BatchNorm and its
running statistics, the ternarytanh ``beta``) is float32 (``float16=True``: float16, lossy);
BatchNorm's ``num_batches_tracked`` counters (training bookkeeping) are not stored.

The header holds ``format``, ``format_version``, ``model`` (what rebuilds the U-Net: width,
activation, dropout, BatchNorm momentum and both quantizer specs), ``tensors`` (per tensor:
name, shape, encoding, offset and byte count in the payload; packed ones add ``bits``,
``quant`` (the spec), ``scale`` or ``scale_tensor``, and ``levels`` for pow2),
``payload_bytes``, ``float32_bytes`` (the same tensors all in float32) and whatever ``metadata``
the writer is given (the CLI adds the run ``config``, the checkpoint's ``input_transform`` and
its ``source``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from quantizer import QuantConv2d, QuantSpec

from ..errors import DataError
from ..fileio import atomic_path
from ..model import TernaryTanh, UNet

MAGIC = b"UNETQPK\0"
FORMAT_VERSION = 1
FORMAT_NAME = "unet-packed"
_PREAMBLE = struct.Struct("<8sIQ")  # magic, version, header length


@dataclass(frozen=True)
class _Entry:
    """One stored tensor: where its bytes come from and how they are encoded."""

    name: str
    shape: tuple[int, ...]
    encoding: str  # packed, float32, float16
    nbytes: int
    spec: QuantSpec | None = None
    source: torch.Tensor | None = None  # the float weight (packed) or the tensor itself


def _float_bytes(numel: int, float16: bool) -> int:
    return numel * (2 if float16 else 4)


def _plan(model: UNet, float16: bool = False) -> list[_Entry]:
    """The tensors the packed file holds, in order, with their encoded sizes."""
    packed = {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, QuantConv2d) and module.weight_quant.kind != "float"
    }
    entries: list[_Entry] = []
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            continue
        shape = tuple(tensor.shape)
        if name in packed:
            spec = packed[name].weight_quant
            entries.append(_Entry(name, shape, "packed", math.ceil(tensor.numel() * spec.storage_bits / 8), spec,
                                  packed[name].weight))
            if spec.kind == "ternary":
                entries.append(_Entry(f"{name}.scale", (shape[0],), "float32", 4 * shape[0]))
        else:
            encoding = "float16" if float16 else "float32"
            entries.append(_Entry(name, shape, encoding, _float_bytes(tensor.numel(), float16), source=tensor))
    return entries


def packed_size_bytes(model: UNet, float16: bool = False) -> int:
    """Bytes of the tensor payload :func:`write_packed` writes for ``model``: for every
    quantized weight ``ceil(numel * storage_bits / 8)`` (plus ``4 C`` for ternary scales), for
    every other tensor ``4 numel`` (``2 numel`` with ``float16``).

    The file is this plus a 20-byte preamble and the JSON header (a few kB that depend on the
    run's config text, not on the model): the memory the model itself needs, as stored.
    """
    return sum(entry.nbytes for entry in _plan(model, float16))


def float32_size_bytes(model: UNet) -> int:
    """Bytes of the same tensors as :func:`packed_size_bytes`, all in float32 (``4 numel``):
    the reference a packed size is compared with."""
    return sum(4 * math.prod(entry.shape) for entry in _plan(model) if not entry.name.endswith(".scale"))


# --- bit packing -------------------------------------------------------------------------------


def pack_codes(codes: torch.Tensor, bits: int) -> bytes:
    """Signed ``codes`` as ``bits``-bit sign-magnitude fields (``bits = 1``: 1 for +1, 0 for
    -1), bit-packed in C order, most significant bit first; ``ceil(numel bits / 8)`` bytes.
    ``ValueError`` when a code does not fit."""
    c = codes.detach().to(torch.int64).reshape(-1).cpu().numpy()
    if bits == 1:
        if not np.all((c == 1) | (c == -1)):
            raise ValueError("1-bit codes must be -1 or +1")
        fields = (c > 0).astype(np.uint64)
    else:
        limit = 2 ** (bits - 1) - 1
        magnitude = np.abs(c)
        if c.size and int(magnitude.max()) > limit:
            raise ValueError(f"code {int(magnitude.max())} does not fit {bits} bits sign-magnitude")
        fields = magnitude.astype(np.uint64) | ((c < 0).astype(np.uint64) << np.uint64(bits - 1))
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    bit_matrix = ((fields[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bit_matrix.reshape(-1)).tobytes()


def unpack_codes(data: bytes, numel: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``numel`` signed codes (int64)."""
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel * bits)
    weights = (np.uint64(1) << np.arange(bits - 1, -1, -1, dtype=np.uint64)).astype(np.int64)
    fields = flat.reshape(numel, bits).astype(np.int64) @ weights
    if bits == 1:
        return torch.from_numpy(np.where(fields == 1, 1, -1).astype(np.int64))
    sign = fields >> (bits - 1)
    magnitude = fields & ((1 << (bits - 1)) - 1)
    return torch.from_numpy(np.where(sign == 1, -magnitude, magnitude).astype(np.int64))


# --- writing -----------------------------------------------------------------------------------


def model_description(model: UNet) -> dict[str, Any]:
    """What rebuilds ``model``'s architecture: ``UNet(**description)`` with the specs as dicts."""
    activation = next(m for m in model.enc1[0] if isinstance(m, (nn.ReLU, nn.Tanh, TernaryTanh)))
    names = {nn.ReLU: "relu", nn.Tanh: "tanh", TernaryTanh: "ternarytanh"}
    dropout = next((m.p for m in model.modules() if isinstance(m, nn.Dropout2d)), 0.0)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    return {
        "base_channels": model.enc1[0][0].out_channels,
        "weight_quant": dataclasses.asdict(model.weight_quant),
        "act_quant": dataclasses.asdict(model.act_quant),
        "activation": names[type(activation)],
        "dropout": float(dropout),
        "bn_momentum": bn.momentum,
    }


def _encode(entry: _Entry, float16: bool) -> tuple[bytes, dict[str, Any], bytes | None]:
    """The bytes of ``entry``, its header record and (ternary) the bytes of its scale tensor."""
    record: dict[str, Any] = {"name": entry.name, "shape": list(entry.shape), "encoding": entry.encoding}
    if entry.encoding != "packed":
        dtype = torch.float16 if float16 else torch.float32
        return entry.source.detach().to(dtype).contiguous().cpu().numpy().tobytes(), record, None
    spec = entry.spec
    codes, scale = spec.storage_codes(entry.source.detach())
    record.update(bits=spec.storage_bits, quant=dataclasses.asdict(spec))
    scale_bytes = None
    if spec.kind == "ternary":
        record["scale_tensor"] = f"{entry.name}.scale"
        scale_bytes = scale.detach().reshape(-1).to(torch.float32).contiguous().cpu().numpy().tobytes()
    else:
        record["scale"] = float(scale)
    if spec.is_pow2:
        record["levels"] = spec.pow2_levels()
    return pack_codes(codes, spec.storage_bits), record, scale_bytes


def write_packed(model: UNet, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None,
                 float16: bool = False) -> dict[str, Any]:
    """Write ``model`` to ``path`` in the packed format (atomically) and return its header.

    ``metadata`` (JSON-serializable) is merged into the header; it cannot replace the format's
    own keys. The payload is exactly :func:`packed_size_bytes` bytes.
    """
    entries = _plan(model, float16)
    records: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    with torch.no_grad():
        pending_scale: bytes | None = None
        for entry in entries:
            if entry.name.endswith(".scale") and pending_scale is not None:
                data, record = pending_scale, {"name": entry.name, "shape": list(entry.shape), "encoding": "float32"}
                pending_scale = None
            else:
                data, record, pending_scale = _encode(entry, float16)
            if len(data) != entry.nbytes:
                raise AssertionError(f"{entry.name}: {len(data)} bytes written, {entry.nbytes} planned")
            record.update(offset=offset, nbytes=len(data))
            records.append(record)
            chunks.append(data)
            offset += len(data)
    header = dict(metadata or {})
    header.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        model=model_description(model),
        float16=float16,
        tensors=records,
        payload_bytes=offset,
        float32_bytes=float32_size_bytes(model),
    )
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(text)))
        handle.write(text)
        for chunk in chunks:
            handle.write(chunk)
    return header


# --- reading -----------------------------------------------------------------------------------


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """The JSON header of a packed file and the file offset where its payload starts;
    :class:`DataError` when ``path`` is missing or not a packed file of a known version."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"packed model {path} does not exist")
    with open(path, "rb") as handle:
        preamble = handle.read(_PREAMBLE.size)
        if len(preamble) < _PREAMBLE.size or preamble[:8] != MAGIC:
            raise DataError(f"{path} is not a packed U-Net file (no {MAGIC!r} magic); write one with "
                            "python -m unet.export RUN --format packed")
        _, version, length = _PREAMBLE.unpack(preamble)
        if version != FORMAT_VERSION:
            raise DataError(f"{path} has packed format version {version}; this code reads version {FORMAT_VERSION}")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise DataError(f"{path}: the packed header is damaged (not JSON)") from None
    return header, _PREAMBLE.size + length


def read_packed(path: str | os.PathLike[str]) -> UNet:
    """Rebuild the U-Net stored by :func:`write_packed`, on the CPU, in train mode (as
    constructed; call ``.eval()`` for inference), laid out ``channels_last`` as the trainer
    builds it (:func:`unet.model.build_model`).

    The layout is part of the model's arithmetic: oneDNN's channels_last convolution adds the
    bias once to the finished sum, the contiguous one adds it into the running sum, so the two
    layouts' float32 outputs can differ in the last bit and move a code at a rounding boundary
    (a briefly trained pow2 model, input x1000: 8 pixels of the 0.5 mask). In channels_last the
    read-back forward equals the exported model's bit for bit.

    Quantized weights decode to exactly the original's quantized weights: the float weight
    set is :meth:`quantizer.QuantSpec.float_for` of the decoded values (a float that quantizes
    to them), so ``conv.quantized_weight()`` equals the writer's bit for bit. Float tensors are
    the stored float32 values (float16 files: rounded). :class:`DataError` on a damaged file.
    """
    path = Path(path)
    header, start = read_header(path)
    try:
        description = dict(header["model"])
        weight_quant = QuantSpec(**description.pop("weight_quant"))
        act_quant = QuantSpec(**description.pop("act_quant"))
        bn_momentum = description.pop("bn_momentum")
        model = UNet(weight_quant=weight_quant, act_quant=act_quant, bn_momentum=bn_momentum, **description)
        records = {record["name"]: record for record in header["tensors"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: the packed header does not describe a U-Net ({exc})") from None
    payload = path.read_bytes()[start:]
    if len(payload) != header.get("payload_bytes"):
        raise DataError(f"{path}: payload is {len(payload)} bytes, the header says {header.get('payload_bytes')}; "
                        "the file is truncated or damaged")

    def chunk(record: dict[str, Any]) -> bytes:
        return payload[record["offset"]:record["offset"] + record["nbytes"]]

    def floats(record: dict[str, Any]) -> torch.Tensor:
        dtype = np.float16 if record["encoding"] == "float16" else np.float32
        return torch.from_numpy(np.frombuffer(chunk(record), dtype=dtype).astype(np.float32)).reshape(record["shape"])

    state = model.state_dict()
    with torch.no_grad():
        for name, target in state.items():
            if name.endswith("num_batches_tracked"):
                continue
            record = records.get(name)
            if record is None:
                raise DataError(f"{path}: tensor {name} is missing from the packed file")
            if record["encoding"] != "packed":
                target.copy_(floats(record).reshape(target.shape))
                continue
            spec = QuantSpec(**record["quant"])
            codes = unpack_codes(chunk(record), target.numel(), record["bits"]).reshape(target.shape)
            if spec.kind == "ternary":
                scale = floats(records[record["scale_tensor"]]).reshape(-1, *([1] * (target.dim() - 1)))
            else:
                scale = record["scale"]
            target.copy_(spec.float_for(spec.decode(codes, scale)))
    return model.to(memory_format=torch.channels_last)
