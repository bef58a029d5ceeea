"""Plain ONNX export of the quantized U-Net, and an onnxruntime forward pass.

The graph holds the already-quantized weights as float32 constants and renders every
activation quantizer of :mod:`quantizer.functional` with standard ONNX operators (opset 13),
value for value:

* FIXED nearest, saturate: ``Clip(Round(x 2^f) 2^-f, -L, L)`` with ``L = 2^i - 2^-f``;
* FIXED nearest, wrap: ``r = Mod(x, 1, fmod=1)`` (the signed fraction, exact), then
  ``Clip(x - r, -(2^i - 1), 2^i - 1) + Round(r 2^f) 2^-f`` (for ``f = 0``: the truncation of
  ``Clip(x, -(2^i - 1), 2^i - 1)``), the arithmetic of the PyTorch rule;
* FIXED pow2: ``2^round(log2 |x|)`` with the exponent decided against the magnitudes where
  PyTorch's float32 ``round(log2 |x|)`` switches, a few ulps from ``sqrt(2) 2^e`` (a first guess
  from ``Log`` corrected by one step either way), flushed to 0 below ``2^pow2_min_exponent``
  when the spec has that bound, clamped to ``pow2_limit(i, f)``, sign of ``x``;
* INT min-max: ``Floor((x - min) / (max - min) 2^b) - 2^(b-1)`` with ``min``/``max`` reduced
  over the whole tensor (all images of the batch, as in training), 0 for a constant tensor;
* binary: ``Sign(x)``, with the rule's own value at ``x = 0`` (read from the rule itself).

BatchNorm (eval mode, running statistics) is ``x alpha + beta`` computed as PyTorch's CPU
kernel computes it (:func:`batchnorm_affine`; onnxruntime's ``BatchNormalization`` differs in
the last bit on about a third of the values); Dropout is dropped (identity in eval mode). Batch,
height and width are dynamic (height and width must be multiples of 8, as for the PyTorch
model).

Floating point: onnxruntime's convolution sums in another order than PyTorch's. Where the sum
is exact in float32 (quantized weights and activations of few bits) the two agree; where it is
not (the float first block, Q8.8, Ternary) values before a quantizer can differ in the last bit,
a value within that distance of a rounding boundary lands on the neighbouring code, and the
flip propagates. :func:`compare_forward` counts such flips per quantizer; tests/model/test_exactness.py
and benchmarks/exactness.py measure them on trained models.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from quantizer import ActivationQuantizer, QuantConv2d, QuantSpec, native
from quantizer.functional import pow2_limit

from ..errors import UserError
from ..fileio import atomic_path
from ..model import ConvUnit, Stage, TernaryTanh, UNet, walk

OPSET = 13
INPUT = "image"
OUTPUT = "probability"
PRODUCER = "unet-fixed-point"


class Graph:
    """A growing ONNX graph: nodes in topological order, initializers, unique names."""

    def __init__(self, exact_batchnorm: bool = True) -> None:
        """``exact_batchnorm``: BatchNorm as PyTorch's kernel computes it (:func:`batchnorm_nodes`);
        False: the standard ``BatchNormalization`` operator (what FINN-style tools map)."""
        self.exact_batchnorm = exact_batchnorm
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        #: initializer names by content key, for emitters that store a recurring constant once
        self.shared: dict[tuple, str] = {}
        self._count = 0

    def name(self, hint: str) -> str:
        """A fresh tensor name ``<hint>_<n>``."""
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: np.ndarray | float, hint: str = "c") -> str:
        """A float32 initializer holding ``value`` (a scalar becomes a 0-d tensor)."""
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def const64(self, value: np.ndarray | float, hint: str = "c") -> str:
        """A float64 initializer holding ``value``."""
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=np.float64), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, domain: str = "", **attrs) -> str:
        """Append one single-output node and return its output's name."""
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, domain=domain or None, **attrs))
        return out


#: ``(graph, input name, spec) -> output name``: renders one activation quantizer.
ActRender = Callable[[Graph, str, QuantSpec], str]
#: ``(graph, conv) -> weight tensor name``: the weight a convolution uses.
WeightRender = Callable[[Graph, nn.Conv2d], str]


# --- activation quantizers as standard operators ---------------------------------------------


def fixed_saturate_ops(g: Graph, x: str, i_bits: int, f_bits: int) -> str:
    """``clamp(round(x 2^f) 2^-f, -L, L)``, ``L = 2^i - 2^-f`` (exact: scaling by 2^f is exact)."""
    limit = 2.0**i_bits - 2.0**-f_bits
    t = g.op("Round", [g.op("Mul", [x, g.const(2.0**f_bits)])])
    t = g.op("Mul", [t, g.const(2.0**-f_bits)])
    return g.op("Clip", [t, g.const(-limit), g.const(limit)])


def fixed_wrap_ops(g: Graph, x: str, i_bits: int, f_bits: int) -> str:
    """``clamp(trunc(x), ±(2^i - 1)) + round(frac(x) 2^f) 2^-f`` (``f = 0``: ``trunc(clamp(x))``).

    ``frac(x) = fmod(x, 1)`` and ``trunc(x) = x - frac(x)`` are both exact in float32.
    """
    limit = 2.0**i_bits - 1
    lo, hi = g.const(-limit), g.const(limit)
    if f_bits == 0:
        c = g.op("Clip", [x, lo, hi])
        return g.op("Sub", [c, g.op("Mod", [c, g.const(1.0)], fmod=1)])
    frac = g.op("Mod", [x, g.const(1.0)], fmod=1)
    whole = g.op("Clip", [g.op("Sub", [x, frac]), lo, hi])
    r = g.op("Mul", [g.op("Round", [g.op("Mul", [frac, g.const(2.0**f_bits)])]), g.const(2.0**-f_bits)])
    return g.op("Add", [whole, r])


#: Biased float32 exponents of the pow2 threshold table (every normal exponent).
_POW2_FIRST, _POW2_LAST = 1, 253


@lru_cache(maxsize=1)
def pow2_rounding_thresholds() -> np.ndarray | None:
    """``t[k]``: the smallest float32 magnitude in ``[2^e, 2^(e+1))``, ``e = k + 1 - 127``, that
    PyTorch's pow2 rule rounds up to ``2^(e+1)`` (``round(log2 a)`` with the float32 ``log2``:
    a few ulps away from ``sqrt(2) 2^e``), for ``e`` from -126 to 126; None when ``torch.log2``
    on this machine does not switch at one threshold per exponent (the export then compares
    with ``sqrt(2) 2^e``)."""
    try:
        mantissas = native.log2_thresholds(_POW2_FIRST, _POW2_LAST)
    except RuntimeError:
        return None
    if not native._agrees_with_torch(_POW2_FIRST, mantissas):
        return None
    bits = (np.arange(_POW2_FIRST, _POW2_LAST + 1, dtype=np.int64) << 23) + mantissas.astype(np.int64)
    return bits.astype(np.uint32).view(np.float32)


def pow2_ops(g: Graph, x: str, i_bits: int, f_bits: int, min_exponent: int | None) -> str:
    """``sign(x) min(2^round(log2|x|), M)`` (0 stays 0), flushed to 0 below ``2^min_exponent``.

    ``e0 = round(ln|x| / ln 2)`` is within one of the exponent; comparing ``|x|`` with the
    thresholds between ``2^e0`` and its neighbours settles it. The thresholds are where
    PyTorch's float32 ``round(log2 a)`` switches (:func:`pow2_rounding_thresholds`, looked up
    with ``Gather``), so the graph rounds as the PyTorch rule does, also within an ulp or two
    of ``sqrt(2) 2^e``; where that table is unavailable (and for subnormal magnitudes) the
    exact ``sqrt(2) 2^e`` is the threshold, which can differ from PyTorch's ``log2`` there.
    """
    a = g.op("Abs", [x])
    e0 = g.op("Round", [g.op("Mul", [g.op("Log", [a]), g.const(1.0 / math.log(2.0))])])
    p = g.op("Pow", [g.const(2.0), e0])
    upper = g.op("Mul", [p, g.const(math.sqrt(2.0))])
    lower = g.op("Mul", [p, g.const(math.sqrt(2.0) / 2.0)])
    table = pow2_rounding_thresholds()
    if table is not None:
        first, last = _POW2_FIRST - 127, _POW2_LAST - 127  # exponents e of the table's entries

        def lookup(e: str) -> str:
            e = g.op("Where", [g.op("IsNaN", [e]), g.const(0.0), e])  # NaN: any valid index (the result is NaN)
            index = g.op("Clip", [g.op("Sub", [e, g.const(float(first))]), g.const(0.0), g.const(float(last - first))])
            index = g.op("Cast", [index], to=TensorProto.INT64)
            return g.op("Gather", [g.const(table, "pow2_thresholds"), index], axis=0)

        below = g.op("Sub", [e0, g.const(1.0)])
        inside = g.op("And", [g.op("GreaterOrEqual", [below, g.const(float(first))]),
                              g.op("LessOrEqual", [e0, g.const(float(last))])])
        upper = g.op("Where", [inside, lookup(e0), upper])
        lower = g.op("Where", [inside, lookup(below), lower])
    p = g.op("Where", [g.op("GreaterOrEqual", [a, upper]), g.op("Mul", [p, g.const(2.0)]), p])
    p = g.op("Where", [g.op("Less", [a, lower]), g.op("Mul", [p, g.const(0.5)]), p])
    if min_exponent is not None:
        p = g.op("Where", [g.op("Less", [p, g.const(2.0**min_exponent)]), g.const(0.0), p])
    p = g.op("Min", [p, g.const(pow2_limit(i_bits, f_bits))])
    return g.op("Where", [g.op("Less", [x, g.const(0.0)]), g.op("Neg", [p]), p])


def int_minmax_ops(g: Graph, x: str, bits: int, floor: Callable[[Graph, str], str] | None = None) -> str:
    """``floor((x - min) / (max - min) 2^b) - 2^(b-1)`` over the whole tensor; 0 if max <= min.

    A span that overflows to inf is computed on halved values, as the PyTorch rule does
    (``h = 0.5``; otherwise ``h = 1``, which changes no value). ``floor`` renders the rounding
    (default: ``Floor``; the QONNX export passes a ``Quant`` node).
    """
    lo = g.op("ReduceMin", [x], keepdims=0)
    hi = g.op("ReduceMax", [x], keepdims=0)
    span = g.op("Sub", [hi, lo])
    h = g.op("Where", [g.op("IsInf", [span]), g.const(0.5), g.const(1.0)])
    lo_h = g.op("Mul", [lo, h])
    span_h = g.op("Sub", [g.op("Mul", [hi, h]), lo_h])
    t = g.op("Div", [g.op("Sub", [g.op("Mul", [x, h]), lo_h]), span_h])
    t = g.op("Mul", [t, g.const(2.0**bits)])
    t = floor(g, t) if floor else g.op("Floor", [t])
    q = g.op("Sub", [t, g.const(2.0 ** (bits - 1))])
    return g.op("Where", [g.op("LessOrEqual", [span, g.const(0.0)]), g.const(0.0), q])


def binary_zero_value(spec: QuantSpec) -> float:
    """The binary rule's output at exactly 0 (0 for ``torch.sign``, +1 for a two-level sign)."""
    with torch.no_grad():
        return float(spec(torch.zeros(1)))


def binary_ops(g: Graph, x: str, spec: QuantSpec) -> str:
    """``sign(x)``, with the rule's own value at ``x = 0`` (:func:`binary_zero_value`)."""
    s = g.op("Sign", [x])
    zero = binary_zero_value(spec)
    if zero == 0.0:
        return s
    return g.op("Where", [g.op("Equal", [x, g.const(0.0)]), g.const(zero), s])


def onnx_activation(g: Graph, x: str, spec: QuantSpec) -> str:
    """Render the activation quantizer ``spec`` with standard ONNX operators (module docstring)."""
    if spec.kind == "float":
        return x
    if spec.kind == "fixed":
        if spec.rounding == "pow2":
            return pow2_ops(g, x, spec.i_bits, spec.f_bits, getattr(spec, "pow2_min_exponent", None))
        if spec.overflow == "saturate":
            return fixed_saturate_ops(g, x, spec.i_bits, spec.f_bits)
        return fixed_wrap_ops(g, x, spec.i_bits, spec.f_bits)
    if spec.kind == "int":
        return int_minmax_ops(g, x, spec.i_bits)
    if spec.kind == "binary":
        return binary_ops(g, x, spec)
    raise UserError(f"an activation quantizer of kind {spec.kind!r} cannot be exported (ternary is for weights only)")


def quantized_weight(conv: nn.Conv2d) -> np.ndarray:
    """The weight the convolution uses: ``conv.quantized_weight()`` for a quantized layer."""
    with torch.no_grad():
        w = conv.quantized_weight() if isinstance(conv, QuantConv2d) else conv.weight
        return w.detach().to(torch.float32).contiguous().cpu().numpy()


def onnx_weight(g: Graph, conv: nn.Conv2d) -> str:
    """The already-quantized weight as a float32 constant."""
    return g.const(quantized_weight(conv), "weight")


# --- the U-Net ---------------------------------------------------------------------------------


def conv_nodes(g: Graph, x: str, conv: nn.Conv2d, weight: WeightRender) -> str:
    """The nodes of ``conv(x)`` with the weight as ``weight`` renders it (zero padding only); the output's name."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise UserError(f"convolution padding {conv.padding!r}/{conv.padding_mode} cannot be exported")
    inputs = [x, weight(g, conv)]
    if conv.bias is not None:
        inputs.append(g.const(conv.bias.detach().float().cpu().numpy(), "bias"))
    ph, pw = conv.padding
    return g.op(
        "Conv", inputs, "conv", kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
        pads=[ph, pw, ph, pw], dilations=list(conv.dilation), group=conv.groups,
    )


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor, bool] | None:
    """``(alpha, beta, fused)`` such that PyTorch's evaluation BatchNorm of ``bn`` on a
    channels_last CPU tensor is ``x alpha + beta`` per channel, with one rounding (``fused``,
    a fused multiply-add) or two; None when neither form reproduces it on a probe.

    ``alpha = weight / sqrt(var + eps)`` and ``beta = bias - mean alpha`` are formed as
    PyTorch's CPU kernel forms them (``quantizer.fusion`` finds the same two forms); which
    rounding the kernel uses is read from ``torch.nn.functional.batch_norm`` itself on a probe
    that includes this layer's parameters.
    """
    with torch.no_grad():
        c = bn.num_features
        mean, var = bn.running_mean.detach().float().cpu(), bn.running_var.detach().float().cpu()
        weight = bn.weight.detach().float().cpu() if bn.weight is not None else torch.ones(c)
        bias = bn.bias.detach().float().cpu() if bn.bias is not None else torch.zeros(c)
        alpha = 1.0 / torch.sqrt(var + float(bn.eps)) * weight
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(3, c, 9, 11, generator=g) * 4).contiguous(memory_format=torch.channels_last)
        expected = nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.0, float(bn.eps))
        a, shape = alpha.double().reshape(1, -1, 1, 1), (1, -1, 1, 1)
        for fused in (True, False):
            if fused:  # the product of two float32 is exact in float64: one rounding to float64, then float32
                beta = (bias.double() - mean.double() * alpha.double()).float()
                got = (x.double() * a + beta.double().reshape(shape)).float()
            else:
                beta = bias - mean * alpha
                got = x * alpha.reshape(shape) + beta.reshape(shape)
            if torch.equal(got.view(torch.int32), expected.view(torch.int32)):
                return alpha, beta, fused
    return None


def batchnorm_nodes(g: Graph, x: str, bn: nn.BatchNorm2d) -> str:
    """BatchNorm in eval mode as PyTorch's CPU kernel computes it (:func:`batchnorm_affine`):
    ``x alpha + beta`` in float32 (two roundings) or, for a kernel that fuses the multiply-add,
    in float64 (exact product, one rounding to float64, then to float32; differs from one
    rounding only when the float64 sum lands exactly halfway between two float32 values).
    onnxruntime's own ``BatchNormalization`` differs from PyTorch's in the last bit on about a
    third of the values (tests/export/test_onnx.py), enough to move a code that lies within one
    ulp of a rounding boundary; it is the fallback where no form matches, and what a graph made
    with ``Graph(exact_batchnorm=False)`` (the QONNX export) holds."""
    if bn.running_mean is None or bn.running_var is None:
        raise UserError("a BatchNorm without running statistics cannot be exported in eval mode")
    affine = batchnorm_affine(bn) if g.exact_batchnorm else None
    if affine is None:
        c = bn.num_features
        weight = bn.weight if bn.weight is not None else torch.ones(c)
        bias = bn.bias if bn.bias is not None else torch.zeros(c)
        params = [g.const(t.detach().float().cpu().numpy(), "bn")
                  for t in (weight, bias, bn.running_mean, bn.running_var)]
        return g.op("BatchNormalization", [x, *params], "bn", epsilon=float(bn.eps))
    alpha, beta, fused = affine
    a, b = alpha.reshape(1, -1, 1, 1).numpy(), beta.reshape(1, -1, 1, 1).numpy()
    if not fused:
        return g.op("Add", [g.op("Mul", [x, g.const(a, "bn_alpha")]), g.const(b, "bn_beta")], "bn")
    wide = g.op("Cast", [x], to=TensorProto.DOUBLE)
    wide = g.op("Add", [g.op("Mul", [wide, g.const64(a, "bn_alpha")]), g.const64(b, "bn_beta")])
    return g.op("Cast", [wide], "bn", to=TensorProto.FLOAT)


def _ternary_tanh(g: Graph, x: str, module: TernaryTanh) -> str:
    # 0.5 tanh(b (2x - 1)) + 0.5 tanh(b (2x + 1)), in the PyTorch module's order of operations
    b, half, one = g.const(float(module.beta)), g.const(0.5), g.const(1.0)
    two_x = g.op("Mul", [g.const(2.0), x])
    left = g.op("Mul", [half, g.op("Tanh", [g.op("Mul", [b, g.op("Sub", [two_x, one])])])])
    right = g.op("Mul", [half, g.op("Tanh", [g.op("Mul", [b, g.op("Add", [two_x, one])])])])
    return g.op("Add", [left, right])


def _activation(g: Graph, x: str, layer: nn.Module) -> str:
    if isinstance(layer, nn.ReLU):
        return g.op("Relu", [x])
    if isinstance(layer, nn.Tanh):
        return g.op("Tanh", [x])
    if isinstance(layer, TernaryTanh):
        return _ternary_tanh(g, x, layer)
    raise UserError(f"layer {type(layer).__name__} cannot be exported")


def unit_nodes(g: Graph, x: str, unit: ConvUnit, weight: WeightRender, act: ActRender) -> str:
    """One :class:`~unet.model.ConvUnit` in eval mode: conv, activation, BatchNorm, activation
    quantizer (its Dropout is the identity in eval mode)."""
    y = _activation(g, conv_nodes(g, x, unit.conv, weight), unit.act)
    return act(g, batchnorm_nodes(g, y, unit.bn), unit.quant.spec)


def _pool(g: Graph, x: str) -> str:
    # explicit pads (ONNX's default, all 0): qonnx's channels-last conversion requires the attribute
    return g.op("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0])


def _up_cat(g: Graph, x: str, skip: str) -> str:
    # bilinear x2, align_corners=False: half-pixel source coordinates, edges clamped. The roi
    # (used only by tf_crop_and_resize) is the whole tensor rather than the empty input name:
    # qonnx's channels-last conversion and hls4ml's ONNX reader need a shape for every input.
    roi = g.const(np.array([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), "roi")
    up = g.op(
        "Resize", [x, roi, g.const(np.array([1.0, 1.0, 2.0, 2.0]), "scales")], "up",
        mode="linear", coordinate_transformation_mode="half_pixel",
    )
    return g.op("Concat", [up, skip], "cat", axis=1)


def unet_graph(model: UNet, g: Graph, x: str, weight: WeightRender, act: ActRender) -> str:
    """Append the U-Net's forward pass (:meth:`unet.model.UNet.forward`) to ``g``; returns the
    name of the sigmoid output."""
    if not isinstance(model, UNet):
        raise UserError(f"only the project's UNet can be exported, got {type(model).__name__}")
    def block(stage: Stage, y: str) -> str:
        for unit in model.block(stage):
            y = unit_nodes(g, y, unit, weight, act)
        return y

    y = walk(x, block, lambda y: _pool(g, y), lambda y, skip: _up_cat(g, y, skip))
    return g.op("Sigmoid", [conv_nodes(g, y, model.head, weight)], "sigmoid")


def check_input_hw(input_hw: tuple[int, int]) -> tuple[int, int]:
    """``(H, W)`` as ints; UserError unless both are positive multiples of 8."""
    try:
        h, w = (int(v) for v in input_hw)
    except (TypeError, ValueError):
        raise UserError(f"input size must be two integers (H, W), got {input_hw!r}") from None
    if h <= 0 or w <= 0 or h % 8 or w % 8:
        raise UserError(f"input size must be positive multiples of 8 (three 2x poolings), got {h}x{w}")
    return h, w


def model_metadata(model: UNet, input_hw: tuple[int, int], metadata: dict, export_format: str) -> dict[str, str]:
    """``metadata`` as strings (non-strings JSON-encoded) plus the formats the graph holds."""
    props = {
        "export_format": export_format,
        "weight_format": str(model.weight_quant),
        "activation_format": str(model.act_quant),
        "input_hw": json.dumps(list(input_hw)),
    }
    for key, value in metadata.items():
        props[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return props


def make_model(g: Graph, out: str, input_shape: list, props: dict[str, str], opsets: list) -> onnx.ModelProto:
    """Wrap ``g`` into a checked ModelProto with one float input and output of ``input_shape``."""
    graph = helper.make_graph(
        g.nodes, "unet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, input_shape)],
        g.initializers,
    )
    proto = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER)
    proto.ir_version = min(proto.ir_version, 8)  # readable by older onnxruntime builds too
    helper.set_model_props(proto, props)
    return proto


def rename_output(g: Graph, out: str) -> None:
    """Make tensor ``out`` the graph's output (:data:`OUTPUT`)."""
    for node in g.nodes:
        node.output[:] = [OUTPUT if o == out else o for o in node.output]


def onnx_model(
    model: UNet, input_hw: tuple[int, int], metadata: dict | None = None, taps: bool = False
) -> onnx.ModelProto:
    """The plain ONNX ModelProto of ``model`` (module docstring); batch, H and W dynamic.

    ``taps=True`` adds every activation quantizer's input and output as extra graph outputs
    (in forward order, input before output), for the layer-by-layer comparison of
    :func:`compare_forward`.
    """
    hw = check_input_hw(input_hw)
    g = Graph()
    tapped: list[str] = []

    def act(g: Graph, x: str, spec: QuantSpec) -> str:
        if not taps:
            return onnx_activation(g, x, spec)
        tapped.append(g.op("Identity", [x], "act_in"))
        tapped.append(g.op("Identity", [onnx_activation(g, x, spec)], "act_out"))
        return tapped[-1]

    out = unet_graph(model, g, INPUT, onnx_weight, act)
    rename_output(g, out)
    props = model_metadata(model, hw, metadata or {}, "onnx")
    proto = make_model(g, OUTPUT, ["batch", 1, "height", "width"], props, [helper.make_opsetid("", OPSET)])
    if taps:
        proto.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, [None] * 4) for t in tapped)
    onnx.checker.check_model(proto)
    return proto


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write ``proto`` to ``path`` atomically (no half-written file under the final name)."""
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))


def export_onnx(model: UNet, path: Path, input_hw: tuple[int, int], metadata: dict) -> None:
    """Write ``model`` as a plain ONNX graph to ``path`` (see the module docstring).

    ``input_hw`` is the image size the model was made for (recorded, and checked to be
    multiples of 8; the graph itself accepts any such size and any batch). ``metadata`` goes
    into the model's ``metadata_props`` (non-string values JSON-encoded), beside
    ``weight_format``, ``activation_format`` and ``input_hw``.
    """
    save_model(onnx_model(model, input_hw, metadata), Path(path))


def cpu_session(proto: onnx.ModelProto, threads: int | None = None, profile_prefix: str | None = None):
    """An onnxruntime CPU session of ``proto`` with ``threads`` intra-op threads (default
    ``torch.get_num_threads()``) that sleep instead of spinning between operators (spinning
    threads steal the cores of a shared machine); ``profile_prefix``: onnxruntime's profiler on,
    its JSON written under that prefix (``session.end_profiling()`` names the file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


class OnnxForward:
    """The model exported to an in-memory ONNX graph and run with onnxruntime on the CPU.

    ``OnnxForward(model, input_hw)(x)`` takes a float (B, 1, H, W) tensor (H, W multiples of 8)
    and returns the probability tensor of the same shape, as ``model(x)`` in eval mode does.
    ``threads`` sets onnxruntime's intra-op threads (default: ``torch.get_num_threads()``).
    """

    def __init__(self, model: UNet, input_hw: tuple[int, int], threads: int | None = None) -> None:
        self.proto = onnx_model(model, input_hw)
        self.session = cpu_session(self.proto, threads)

    def __call__(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"input H and W must be divisible by 8, got {tuple(x.shape[-2:])}")
        image = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (prob,) = self.session.run([OUTPUT], {INPUT: image})
        return torch.from_numpy(prob)



@dataclass
class LayerComparison:
    """One activation quantizer, PyTorch against onnxruntime (see :func:`compare_forward`).

    ``flips``: output values that differ (out of ``values``); ``input_diff``: largest
    difference of the quantizer's inputs, beside ``input_max``, the largest input magnitude;
    ``render_errors``: values where the PyTorch rule applied to onnxruntime's input differs
    from onnxruntime's output (0 when the ONNX rendering of the rule is exact).
    """

    name: str
    spec: QuantSpec
    flips: int
    values: int
    input_diff: float
    input_max: float
    render_errors: int


def compare_forward(
    model: UNet, x: Tensor, threads: int | None = None
) -> tuple[Tensor, Tensor, list[LayerComparison]]:
    """Run ``model`` (eval mode) and its ONNX export on ``x``, tapping every activation quantizer
    (onnxruntime with ``threads`` intra-op threads, default torch's).

    Returns the PyTorch and onnxruntime probabilities and one :class:`LayerComparison` per
    activation quantizer in forward order. A flip whose inputs differ by float rounding only
    (``render_errors == 0``) comes from the two libraries' different summation orders.
    """
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, ActivationQuantizer)]
    ins: list[np.ndarray] = []
    outs: list[np.ndarray] = []
    hooks = []
    for _, m in modules:
        hooks.append(m.register_forward_pre_hook(lambda _m, args: ins.append(args[0].detach().cpu().numpy().copy())))
        hooks.append(m.register_forward_hook(lambda _m, _a, out: outs.append(out.detach().cpu().numpy().copy())))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            prob = model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    proto = onnx_model(model, tuple(x.shape[-2:]), taps=True)
    session = cpu_session(proto, threads)
    names = [o.name for o in proto.graph.output]
    results = session.run(names, {INPUT: x.detach().float().cpu().contiguous().numpy()})
    layers = []
    for k, (name, m) in enumerate(modules):
        ort_in, ort_out = results[1 + 2 * k], results[2 + 2 * k]
        with torch.no_grad():
            rule = m.spec(torch.from_numpy(ort_in.copy())).numpy()
        layers.append(LayerComparison(
            name, m.spec, int(np.count_nonzero(ort_out != outs[k])), int(ort_out.size),
            float(np.abs(ort_in - ins[k]).max()), float(np.abs(ins[k]).max()),
            int(np.count_nonzero((rule != ort_out) & ~(np.isnan(rule) & np.isnan(ort_out)))),
        ))
    return prob, torch.from_numpy(results[0]), layers
