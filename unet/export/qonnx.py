"""QONNX export: the quantized U-Net with QONNX ``Quant`` / ``BipolarQuant`` nodes.

QONNX (arXiv 2206.07527) marks quantized tensors with ``Quant(x, scale, zero_point,
bit_width)`` (attributes ``signed``, ``narrow``, ``rounding_mode``):
``y = (clamp(round(x / scale + z), min_int, max_int) - z) scale``, and binary tensors with
``BipolarQuant(x, scale)``: ``y = scale (x >= 0 ? 1 : -1)``. FINN-style tools read the integer
widths from these nodes. The graph has a static shape ``(1, 1, H, W)`` (``input_hw``), as FINN
expects. What each mode becomes:

* **FIXED nearest, saturate** Qi.f: one ``Quant`` (scale ``2^-f``, zero point 0, ``1 + i + f``
  bits, signed, narrow, ROUND = half to even) per weight and per activation quantizer, the
  PyTorch rule exactly (codes ``|c| <= 2^(i+f) - 1``).
* **FIXED nearest, wrap** Qi.f: weights are on the grid ``2^-f`` with ``|c| <= 2^(i+f)`` (the
  fraction may round up to the next integer), so they get ``Quant`` at ``2 + i + f`` bits. The
  activation rule ``clamp(trunc(x), ±(2^i - 1)) + round(frac(x) 2^f) 2^-f`` is not one clamp
  of one rounding (it wraps), so it is decomposed exactly: ``r = Mod(x, 1, fmod=1)``; the
  integer part ``Quant(x, 1, 0, 1 + i, DOWN)`` (truncation, clamped to ``±(2^i - 1)``; absent
  when ``i = 0``); the fraction ``Quant(r, 2^-f, 0, f + 2, ROUND)``; their sum, marked as the
  ``(2 + i + f)``-bit tensor it is by a final ``Quant`` (scale ``2^-f``, an identity on it).
* **INT** b bits (min-max): weights are integers in ``[-2^(b-1), 2^(b-1)]``: ``Quant`` at
  ``b + 1`` bits, scale 1. The activation rule's range is the min and max of the whole tensor
  at run time, which a ``Quant`` node's constant scale cannot hold, so it is decomposed
  exactly: ``t = (x - min) / (max - min) 2^b`` with standard operators, its floor by
  ``Quant(t, 1, 0, b + 1, unsigned, FLOOR)``, minus ``2^(b-1)``. FINN cannot map this dynamic
  range to hardware; the graph is exact and executable.
* **BNN**: ``BipolarQuant`` (scale 1) on the sign weights and on the activations. It maps 0 to
  +1; where the PyTorch rule maps 0 to 0 (``torch.sign``), a weight equal to 0 is refused and an
  activation exactly 0.0 (a BatchNorm output hitting 0.0 exactly) would differ.
* **Ternary**: weights ``Quant`` with the per-output-channel scale ``alpha_c``, 2 bits, signed,
  narrow (codes -1, 0, 1); activations float.
* **Normal**: no quantizers (a float ONNX graph).

BatchNorm stays the standard ``BatchNormalization`` operator (what FINN-style tools map), which
onnxruntime computes with other roundings than PyTorch's kernel (the plain ONNX export renders
PyTorch's arithmetic instead: :func:`unet.export.onnx.batchnorm_nodes`).

Refused with :class:`~unet.errors.UserError`: FIXED pow2 (QONNX has no power-of-two /
logarithmic quantizer; use ``--format onnx``, whose standard operators render it exactly, or
the packed format) and Q0.0 (it maps everything to 0; QONNX treats a 1-bit signed ``Quant`` as
bipolar).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper
from torch import nn

from quantizer import QuantConv2d, QuantSpec

from ..errors import UserError
from ..model import UNet
from .onnx import (
    INPUT,
    OPSET,
    OUTPUT,
    Graph,
    binary_zero_value,
    check_input_hw,
    int_minmax_ops,
    make_model,
    model_metadata,
    quantized_weight,
    save_model,
    unet_graph,
)

DOMAIN = "qonnx.custom_op.general"


def fixed_code_bound(spec: QuantSpec) -> int:
    """Largest ``|code|`` of FIXED nearest Qi.f: ``2^(i+f) - 1``, or ``2^(i+f)`` when wrapped
    with ``f >= 1`` (the rounded fraction reaches the next integer: Q0.4 0.99 -> 1.0)."""
    full = 2 ** (spec.i_bits + spec.f_bits)
    return full if spec.overflow == "wrap" and spec.f_bits > 0 else full - 1


def signed_width(bound: int) -> int:
    """Bits of a signed narrow-range integer holding ``[-bound, bound]``: ``bitlength(bound) + 1``."""
    return int(bound).bit_length() + 1


def check_exportable(spec: QuantSpec, role: str) -> None:
    """UserError naming why ``spec`` (the ``role`` quantizer) has no QONNX rendering."""
    if spec.kind == "fixed" and spec.rounding == "pow2":
        raise UserError(
            f"{role} quantizer {spec} cannot be exported to QONNX: QONNX has no power-of-two (logarithmic) "
            "quantizer; use --format onnx (exact standard operators) or --format packed"
        )
    if spec.kind == "fixed" and spec.i_bits + spec.f_bits == 0:
        raise UserError(f"{role} quantizer Q0.0 maps every value to 0 and has no QONNX rendering; choose i + f >= 1")


def quant(
    g: Graph, x: str, scale: np.ndarray | float, bits: int, signed: bool = True, narrow: bool = True,
    rounding: str = "ROUND",
) -> str:
    """A QONNX ``Quant`` node, zero point 0."""
    return g.op(
        "Quant", [x, g.const(scale, "scale"), g.const(0.0, "zeropt"), g.const(float(bits), "bitwidth")], "quant",
        domain=DOMAIN, signed=int(signed), narrow=int(narrow), rounding_mode=rounding,
    )


def qonnx_weight(g: Graph, conv: nn.Conv2d) -> str:
    """The quantized weight as a constant followed by the ``Quant`` / ``BipolarQuant`` that
    declares its width (an identity on these values); float layers get the constant alone."""
    w = quantized_weight(conv)
    name = g.const(w, "weight")
    spec = conv.weight_quant if isinstance(conv, QuantConv2d) else QuantSpec()
    if spec.kind == "float":
        return name
    check_exportable(spec, "weight")
    if spec.kind == "fixed":
        return quant(g, name, 2.0**-spec.f_bits, signed_width(fixed_code_bound(spec)))
    if spec.kind == "int":
        return quant(g, name, 1.0, signed_width(2 ** (spec.i_bits - 1)))
    if spec.kind == "binary":
        if not np.all(np.abs(w) == 1.0):
            raise UserError("BNN weights contain exact zeros (sign(0) = 0), a third level BipolarQuant cannot hold")
        return g.op("BipolarQuant", [name, g.const(1.0, "scale")], "bipolar", domain=DOMAIN)
    if spec.kind == "ternary":
        with torch.no_grad():
            _, alpha = spec.codes(conv.weight)
        scale = alpha.float().cpu().numpy()
        scale[scale == 0] = 1.0  # an all-zero filter: codes 0 at any scale
        return quant(g, name, scale, 2)
    raise UserError(f"weight quantizer {spec} cannot be exported to QONNX")


def _fixed_wrap(g: Graph, x: str, spec: QuantSpec) -> str:
    i, f = spec.i_bits, spec.f_bits
    whole = quant(g, x, 1.0, i + 1, rounding="DOWN") if i > 0 else None
    if f == 0:
        return whole  # trunc(clamp(x, ±(2^i - 1))) = clamp(trunc(x), ±(2^i - 1))
    frac = g.op("Mod", [x, g.const(1.0)], fmod=1)
    part = quant(g, frac, 2.0**-f, f + 2)
    total = g.op("Add", [whole, part]) if whole else part
    return quant(g, total, 2.0**-f, signed_width(fixed_code_bound(spec)))


def qonnx_activation(g: Graph, x: str, spec: QuantSpec) -> str:
    """Render one activation quantizer with QONNX nodes (module docstring)."""
    if spec.kind == "float":
        return x
    check_exportable(spec, "activation")
    if spec.kind == "fixed":
        if spec.overflow == "saturate":
            return quant(g, x, 2.0**-spec.f_bits, 1 + spec.i_bits + spec.f_bits)
        return _fixed_wrap(g, x, spec)
    if spec.kind == "int":
        bits = spec.i_bits
        return int_minmax_ops(g, x, bits, floor=lambda g, t: quant(g, t, 1.0, bits + 1, False, False, "FLOOR"))
    if spec.kind == "binary":
        return g.op("BipolarQuant", [x, g.const(1.0, "scale")], "bipolar", domain=DOMAIN)
    raise UserError(f"activation quantizer {spec} cannot be exported to QONNX (ternary is for weights only)")


def qonnx_model(model: UNet, input_hw: tuple[int, int], metadata: dict | None = None) -> onnx.ModelProto:
    """The QONNX ModelProto of ``model`` for one ``(1, 1, H, W)`` image, shapes inferred."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    h, w = check_input_hw(input_hw)
    for spec, role in ((model.weight_quant, "weight"), (model.act_quant, "activation")):
        check_exportable(spec, role)
    g = Graph(exact_batchnorm=False)  # the standard BatchNormalization that FINN-style tools map
    out = unet_graph(model, g, INPUT, qonnx_weight, qonnx_activation)
    for node in g.nodes:
        node.output[:] = [OUTPUT if o == out else o for o in node.output]
    props = model_metadata(model, (h, w), metadata or {}, "qonnx")
    if model.act_quant.kind == "binary" and binary_zero_value(model.act_quant) == 0.0:
        props["note"] = "BipolarQuant maps an activation of exactly 0.0 to +1; the PyTorch rule maps it to 0"
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)]
    proto = make_model(g, OUTPUT, [1, 1, h, w], props, opsets)
    proto = ModelWrapper(proto).transform(InferShapes()).transform(InferDataTypes()).model
    helper.set_model_props(proto, props)  # the transformations rebuild the model without them
    # qonnx's ModelWrapper.get_metadata_prop reads the graph's metadata_props (IR version 10)
    proto.ir_version = max(proto.ir_version, 10)
    proto.graph.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in props.items())
    onnx.checker.check_model(proto)
    return proto


def export_qonnx(model: UNet, path: Path, input_hw: tuple[int, int], metadata: dict) -> None:
    """Write ``model`` as a QONNX graph to ``path`` (module docstring); UserError for a mode
    QONNX cannot express. ``metadata`` goes into ``metadata_props`` as in
    :func:`unet.export.onnx.export_onnx`."""
    save_model(qonnx_model(model, input_hw, metadata), Path(path))


def run_qonnx(proto_or_path: onnx.ModelProto | Path | str, images: np.ndarray) -> np.ndarray:
    """Execute a QONNX model with ``qonnx.core.onnx_exec.execute_onnx``, one image at a time:
    ``images`` (B, 1, H, W) float32 in, probabilities (B, 1, H, W) out."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    wrapped = ModelWrapper(proto_or_path if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path))
    out = [execute_onnx(wrapped, {INPUT: img[None].astype(np.float32)})[OUTPUT] for img in images]
    return np.concatenate(out, axis=0)
