"""Integer ONNX export: the integer engine's arithmetic as standard ONNX operators (opset 13).

``python -m unet.export RUN --format onnx-int`` writes a graph that onnxruntime runs to the very
activation codes of :class:`unet.integer.IntegerUNet` (its threshold tables, its integer kernels):

* **First block** (float weights) and its activation quantizer: the float graph of
  :mod:`unet.export.onnx` (same emitters), then the codes ``trunc(q 2^k)`` (``Mul`` by the exact
  power-of-two inverse scale, ``Cast`` to int32, which truncates).
* **Quantized convolutions** (:func:`~unet.export.int_layers.integer_conv`), on NHWC codes: the
  int32 codes offset by the layer's code bound ``M`` (non-negative), padded with ``M`` (a zero
  code), split into uint8 limbs (shifts on uint32) and laid out as im2col matrices by one
  ``Gather`` at each pixel's tap positions (built once per resolution); the weights into signed
  7-bit limbs, int8 (9 C, O) matrices; one ``MatMulInteger`` (uint8 x int8 -> int32:
  onnxruntime's VNNI / AMX GEMM; its ``ConvInteger`` took about ten times longer) per (activation
  limb, weight limb) pair, combined as ``sum P_ij 256^i 128^j - M sum(w_o)``: in int32 where the
  export proves that no partial sum can overflow, else in int64; a layer past 2^63 is refused.
* **Decoder blocks' first convolutions** (:func:`~unet.export.int_layers.decoder_conv`) on
  ``[x16 bilinear x2 of y, 16 skip]`` without the upsampled codes: phase kernels (the 3x3 kernel
  composed with the upsampling weights, four output phases per pixel of ``y``) on the edge-padded
  coarse codes ``y``, the skip gathered in the same pixel order, one requantization, a
  ``Transpose`` that puts the phases in place; the outer rows and columns (where the zero padding
  meets the upsampled image) recomputed by ``integer_conv`` on two four-pixel strips.
* **Requantization** (bias, activation, BatchNorm, quantizer): the static per-channel threshold
  table of :class:`~unet.integer.thresholds.ThresholdRequantizer` applied to the oriented
  accumulator (``Mul`` by -1 on channels with a negative BatchNorm gain): ``code = v[#{k: t_k <=
  o acc}]``, the engine's ``searchsorted`` lookup (:func:`~unet.export.int_layers.threshold_codes`):
  one ``Gather`` from a table of every code between each channel's first and last threshold where
  that fits 8 MiB (nearest Q6.0), else a branchless binary search (``Gather`` of a threshold,
  ``GreaterOrEqual``, add), from a proven float32 linear guess where there is one; tables of at
  most 3 thresholds (BNN) by one broadcast ``GreaterOrEqual`` and ``ReduceSum``.
* **Max pooling**: ``Max`` of the four stride-2 slices of the int32 NHWC codes.
* **Head**: float (the last codes back to NCHW, ``Cast`` times the scale, the float ``Conv``,
  ``Sigmoid``).

Only formats whose threshold tables are static can be written: INT (the range is each batch's
min and max), Ternary (float activations) and wide formats whose tables the engine builds per
batch (Q8.8, ...) are refused with the reason. The float parts sum in onnxruntime's
order: the first block's codes can differ from PyTorch's where a value lies within float
rounding of a quantizer step (:func:`first_block_flips` counts them; docs/engines.md), and the
head's probabilities in the last bits; the integer part is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import Tensor

from ..errors import UserError
from ..integer import IntegerUNet
from ..integer.engine import UP_GAIN
from ..model import Stage, UNet, stage_channels, walk
from .int_layers import (
    INT32_LIMIT,
    conv_taps,
    decoder_conv,
    integer_conv,
    maxpool_codes,
    phase_taps,
    threshold_codes,
)
from .onnx import (
    INPUT,
    OPSET,
    OUTPUT,
    Graph,
    check_input_hw,
    conv_nodes,
    cpu_session,
    make_model,
    model_metadata,
    onnx_activation,
    onnx_weight,
    rename_output,
    save_model,
    unit_nodes,
)

#: Graph input of the codes variant (``start="codes"``): the first block's output codes.
CODES_INPUT = "enc1_codes"


def check_exportable(engine: IntegerUNet) -> None:
    """UserError (one line, the reason) for a model whose integer engine no fixed integer graph holds."""
    if engine.mode == "ternary":
        raise UserError("Ternary models keep float activations (no activation codes): use --format onnx")
    if engine.mode == "int":
        raise UserError("INT (min-max) quantizers take each batch's range, so their thresholds change per batch "
                        "and no fixed integer graph holds them: use --format onnx or predict --engine integer")
    if engine.fmt.max_code * UP_GAIN >= INT32_LIMIT:
        raise UserError(f"the activation codes of {engine.fmt.spec} (up to {engine.fmt.max_code}, x{UP_GAIN} "
                        "upsampled) do not fit int32")


def integer_onnx_model(
    model: UNet, input_hw: tuple[int, int], metadata: dict | None = None, taps: bool = False,
    start: str = "image", engine: IntegerUNet | None = None,
) -> onnx.ModelProto:
    """The integer ONNX ModelProto of ``model`` (module docstring); batch, H and W dynamic.

    ``taps``: every unit's int32 codes as extra outputs ``codes:<unit>`` (``enc1.0`` ...
    ``dec1.1``, as :meth:`IntegerUNet.forward_codes`). ``start="codes"``: the graph reads the
    first block's output codes (int32 ``enc1_codes``, (B, C, H, W)) instead of the image, to check
    the integer part on the engine's own first-block codes. ``engine``: an already built
    ``IntegerUNet.from_model(model)``.
    """
    if start not in ("image", "codes"):
        raise ValueError(f"start must be 'image' or 'codes', got {start!r}")
    hw = check_input_hw(input_hw)
    if not isinstance(model, UNet):
        raise UserError(f"only the project's UNet can be exported, got {type(model).__name__}")
    engine = engine or IntegerUNet.from_model(model)
    check_exportable(engine)
    fmt = engine.fmt
    g = Graph()
    tapped: list[str] = []

    def tap(name: str, codes: str, nhwc: bool = True) -> None:
        if taps:
            tapped.append(g.op("Transpose", [codes], f"codes:{name}", perm=[0, 3, 1, 2]) if nhwc else
                          g.op("Identity", [codes], f"codes:{name}"))

    def block(stage: Stage, y: str) -> str:
        if stage.float_weights:
            if start == "codes":
                return g.op("Transpose", [CODES_INPUT], "nhwc", perm=[0, 2, 3, 1])
            for i, unit in enumerate(engine.model.block(stage)):
                y = unit_nodes(g, y, unit, onnx_weight, onnx_activation)
                codes = g.op("Cast", [g.op("Mul", [y, g.const(1.0 / fmt.scale)])], "codes", to=TensorProto.INT32)
                tap(f"{stage.name}.{i}", codes, nhwc=False)
            return g.op("Transpose", [codes], "nhwc", perm=[0, 2, 3, 1])  # the integer part runs NHWC
        for i in range(len(engine.model.block(stage))):
            unit = engine.units[f"{stage.name}.{i}"]
            if isinstance(y, tuple):  # a decoder's first unit: (codes one level down, skip codes)
                low, skip = y
                y = decoder_conv(g, low, skip, skip_channels[stage.skip], unit, taps_at[depth + 1],
                                 phase_taps(g, low))
            else:
                if depth not in taps_at:
                    taps_at[depth] = conv_taps(g, y)
                acc, dtype = integer_conv(g, y, unit, taps_at[depth])
                y = threshold_codes(g, acc, unit, dtype)
            tap(unit.name, y)
        return y

    def pool(y: str) -> str:
        nonlocal depth
        depth += 1
        return maxpool_codes(g, y)

    def up_cat(y: str, skip: str) -> tuple[str, str]:
        nonlocal depth
        depth -= 1
        return y, skip  # decoder_conv upsamples and concatenates inside the convolution

    depth = 0  # the resolution: H / 2^depth
    skip_channels = {name: c_out for name, (_, c_out) in stage_channels(engine.model.base_channels).items()}
    taps_at: dict[int, str] = {}
    y = walk(INPUT, block, pool, up_cat)
    y = g.op("Transpose", [y], "nchw", perm=[0, 3, 1, 2])
    values = g.op("Mul", [g.op("Cast", [y], to=TensorProto.FLOAT), g.const(fmt.scale)], "values")
    out = g.op("Sigmoid", [conv_nodes(g, values, engine.model.head, onnx_weight)], "sigmoid")
    rename_output(g, out)
    props = model_metadata(model, hw, metadata or {}, "onnx-int")
    opsets = [helper.make_opsetid("", OPSET)]
    proto = make_model(g, OUTPUT, ["batch", 1, "height", "width"], props, opsets)
    if start == "codes":
        channels = engine.model.base_channels
        proto.graph.input[0].CopyFrom(helper.make_tensor_value_info(
            CODES_INPUT, TensorProto.INT32, ["batch", channels, "height", "width"]))
    if taps:
        proto.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.INT32, [None] * 4) for t in tapped)
    onnx.checker.check_model(proto)
    return proto


def export_onnx_int(model: UNet, path: Path, input_hw: tuple[int, int], metadata: dict) -> None:
    """Write ``model`` as an integer ONNX graph to ``path`` (module docstring); ``input_hw`` and
    ``metadata`` as for :func:`unet.export.onnx.export_onnx`."""
    save_model(integer_onnx_model(model, input_hw, metadata), Path(path))


class IntegerOnnxForward:
    """The model's integer ONNX graph run with onnxruntime on the CPU.

    ``IntegerOnnxForward(model, input_hw)(x)`` maps a float (B, 1, H, W) tensor (H, W multiples
    of 8) to probabilities like ``IntegerUNet.from_model(model)(x)``; :meth:`forward_codes` gives
    every unit's codes (int64) when built with ``taps=True``.
    """

    def __init__(self, model: UNet, input_hw: tuple[int, int], threads: int | None = None,
                 taps: bool = False, start: str = "image") -> None:
        self.proto = integer_onnx_model(model, input_hw, taps=taps, start=start)
        self.session = cpu_session(self.proto, threads)
        self.start = start
        self.names = [o.name for o in self.proto.graph.output]

    def _run(self, x: Tensor) -> list[np.ndarray]:
        if self.start == "codes":
            return self.session.run(self.names, {CODES_INPUT: x.detach().to("cpu", torch.int32).contiguous().numpy()})
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"input H and W must be divisible by 8, got {tuple(x.shape[-2:])}")
        return self.session.run(self.names, {INPUT: x.detach().to("cpu", torch.float32).contiguous().numpy()})

    def __call__(self, x: Tensor) -> Tensor:
        """Probabilities (B, 1, H, W), float32 (``x``: the image, or int codes with ``start="codes"``)."""
        return torch.from_numpy(self._run(x)[0])

    def forward_codes(self, x: Tensor) -> dict[str, Tensor]:
        """Int64 codes of every unit, keyed ``enc1.0`` ... ``dec1.1`` (needs ``taps=True``)."""
        results = self._run(x)
        return {name.split(":", 1)[1].rsplit("_", 1)[0]: torch.from_numpy(r).to(torch.int64)
                for name, r in zip(self.names, results, strict=True) if name.startswith("codes:")}


@torch.no_grad()
def first_block_flips(model: UNet, x: Tensor, threads: int | None = None) -> tuple[int, int]:
    """``(codes that differ, codes)`` of the first block's output (``enc1.1``) between
    onnxruntime's float graph and PyTorch's (the integer engine's) on images ``x``."""
    engine = IntegerUNet.from_model(model)
    expected = engine.forward_codes(x)
    last = [k for k in expected if k.startswith("enc1.")][-1]
    got = IntegerOnnxForward(model, tuple(x.shape[-2:]), threads, taps=True).forward_codes(x)
    return int((got[last] != expected[last]).sum()), int(expected[last].numel())
