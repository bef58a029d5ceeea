"""The hls4ml model of the integer U-Net, built from :class:`~unet.integer.IntegerUNet`'s tables.

The HLS model takes the first block's output codes (the host computes the float first block and
its activation quantizer, as the integer engine does) and returns the last unit's codes (the host
runs the float head and the sigmoid on their exact values). In between, every operation is the
engine's integer arithmetic, in ``ap_int`` types wide enough for the engine's static bounds:

* each quantized unit is an hls4ml ``Conv2D`` (3x3, same padding, integer weight codes, no bias:
  the bias is folded into the thresholds) followed by a ``MultiThreshold``;
* ``MaxPooling2D`` 2x2 on codes;
* ``UpConcat``: bilinear x2 of codes with edge replication (x16) and the skip connection x16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UserError
from ...integer.engine import UP_GAIN, IntegerUNet
from ...model import TOPOLOGY, Stage, walk

#: A tensor of the hls4ml graph while the wiring is walked: layer name, height, width, channels.
Tensor4 = tuple[str, int, int, int]
INPUT_NAME = "enc1_codes"
IO_TYPES = ("io_parallel",)


def signed_bits(bound: int) -> int:
    """Width of a signed integer type holding ``[-bound, bound]``."""
    return max(2, int(bound).bit_length() + 1)


def ap_int(bound: int) -> str:
    """``ap_int<W>`` holding ``[-bound, bound]``."""
    return f"ap_int<{signed_bits(bound)}>"


@dataclass
class UnitTables:
    """One quantized unit in hardware terms: weight codes (O, C, 3, 3), the accumulator bound,
    the threshold tables (orientation (C,), thresholds (C, K), codes (C, K + 1)), the largest
    input code."""

    name: str
    weights: np.ndarray
    acc_bound: int
    max_input_code: int
    orientation: np.ndarray
    thresholds: np.ndarray
    codes: np.ndarray


def check_supported(engine: IntegerUNet) -> None:
    """UserError naming why the model has no exact hls4ml rendering."""
    if engine.mode == "ternary":
        raise UserError("Ternary models keep float activations (TWN): they have no integer model to put in hls4ml; "
                        "export them with --format onnx")
    if engine.mode == "int":
        raise UserError("INT (min-max) activations take their range from each whole batch at run time, so no fixed "
                        "threshold table exists; hls4ml needs a calibrated static range, which this project does not "
                        "train")
    # FIXED wrap needs no refusal: the threshold table's per-channel codes express the wrapped
    # (non-monotone) quantizer exactly, as in the integer engine; hls4ml's own quantizers cannot.


def unit_tables(engine: IntegerUNet) -> list[UnitTables]:
    """The threshold tables and weight codes of every quantized unit, in forward order; UserError
    when a table is not built over the whole accumulator range (it would then depend on inputs)."""
    check_supported(engine)
    out = []
    for name, stage, _ in engine.model.units():
        if stage.float_weights:
            continue
        unit = engine.units[name]
        req = unit.requant
        if not req.static or req.thresholds() is None:
            raise UserError(f"layer {name}: {req.fmt.spec} activations need more thresholds over the layer's whole "
                            "accumulator range than a fixed table holds (the engine builds it per input range); "
                            "hls4ml needs a fixed table: use fewer activation bits (e.g. Q6.0)")
        orientation, thresholds, codes = (t.numpy() for t in req.thresholds())
        out.append(UnitTables(name, unit.weights.numpy(), int(unit.static_bound), int(unit.max_input_code),
                              orientation.astype(np.int64), thresholds.astype(np.int64), codes.astype(np.int64)))
    return out


def _padded_thresholds(t: UnitTables) -> tuple[np.ndarray, np.ndarray, int]:
    """Thresholds with unused slots above every reachable accumulator, and at least one column."""
    big = t.acc_bound + 1
    thr = np.where(t.thresholds >= np.iinfo(np.int64).max, big, t.thresholds)
    codes = t.codes
    if thr.shape[1] == 0:
        thr = np.full((thr.shape[0], 1), big, dtype=np.int64)
        codes = np.concatenate([codes, codes], axis=1)
    return thr, codes, big


def layer_list(engine: IntegerUNet, input_hw: tuple[int, int]) -> tuple[list[dict[str, Any]], dict[str, dict]]:
    """hls4ml layer dictionaries of the U-Net between the first block's codes and the last unit's
    codes, and the per-layer ``Precision`` / ``Trace`` configuration."""
    h, w = input_hw
    tables = {t.name: t for t in unit_tables(engine)}
    max_code = engine.fmt.max_code
    c1 = engine.model.block(TOPOLOGY[0])[1].conv.out_channels
    layers: list[dict[str, Any]] = [{"name": INPUT_NAME, "class_name": "InputLayer", "input_shape": [h, w, c1]}]
    precision: dict[str, dict] = {INPUT_NAME: {"Precision": {"result": ap_int(max_code)}}}

    def add(layer: dict[str, Any], prec: dict[str, str]) -> str:
        layer.setdefault("data_format", "channels_last")
        layers.append(layer)
        precision[layer["name"]] = {"Precision": prec, "Trace": True}
        return layer["name"]

    def maxpool(x: str, name: str, hh: int, ww: int, c: int) -> str:
        return add({"name": name, "class_name": "MaxPooling2D", "inputs": [x], "in_height": hh, "in_width": ww,
                    "out_height": hh // 2, "out_width": ww // 2, "n_filt": c, "pool_height": 2, "pool_width": 2,
                    "stride_height": 2, "stride_width": 2, "pad_top": 0, "pad_bottom": 0, "pad_left": 0,
                    "pad_right": 0}, {"result": ap_int(max_code)})

    def unit(x: str, name: str, hh: int, ww: int) -> str:
        t = tables[name]
        o, c = t.weights.shape[:2]
        conv = name.replace(".", "_") + "_conv"
        add({"name": conv, "class_name": "Conv2D", "inputs": [x], "in_height": hh, "in_width": ww,
             "out_height": hh, "out_width": ww, "n_chan": c, "n_filt": o, "filt_height": 3, "filt_width": 3,
             "stride_height": 1, "stride_width": 1, "pad_top": 1, "pad_bottom": 1, "pad_left": 1, "pad_right": 1,
             "dilation_height": 1, "dilation_width": 1, "padding": "same",
             "weight_data": np.transpose(t.weights, (2, 3, 1, 0)).astype(np.float64), "bias_data": None},
            {"weight": ap_int(int(np.abs(t.weights).max())), "accum": ap_int(t.acc_bound),
             "result": ap_int(t.acc_bound)})
        thr, codes, _ = _padded_thresholds(t)
        return add({"name": name.replace(".", "_"), "class_name": "MultiThreshold", "inputs": [conv], "n_chan": o,
                    "n_thresholds": thr.shape[1], "acc_bits": signed_bits(t.acc_bound + 1),
                    "orientation_data": t.orientation, "thresholds_data": thr.ravel(), "codes_data": codes.ravel()},
                   {"result": ap_int(max_code)})

    def block(stage: Stage, x: Tensor4) -> Tensor4:
        if stage.float_weights:  # the first block runs on the host: its codes are the project's input
            return x
        name, hh, ww, _ = x
        y = unit(unit(name, f"{stage.name}.0", hh, ww), f"{stage.name}.1", hh, ww)
        return y, hh, ww, tables[f"{stage.name}.1"].weights.shape[0]

    def pool(x: Tensor4) -> Tensor4:
        name, hh, ww, c = x
        pools.append(name)
        return maxpool(name, f"pool{len(pools)}", hh, ww, c), hh // 2, ww // 2, c

    def up_cat(x: Tensor4, skip: Tensor4) -> Tensor4:
        name, hh, ww, c = x
        ups.append(layer := f"upcat{len(ups) + 1}")
        up = add({"name": layer, "class_name": "UpConcat", "inputs": [name, skip[0]], "in_height": hh,
                  "in_width": ww, "n_chan_up": c, "n_chan_skip": skip[3]}, {"result": ap_int(max_code * UP_GAIN)})
        return up, 2 * hh, 2 * ww, c + skip[3]

    pools: list[str] = []
    ups: list[str] = []
    walk((INPUT_NAME, h, w, c1), block, pool, up_cat)
    return layers, precision


def hls_config(out_dir: Path, part: str, io_type: str, precision: dict[str, dict]) -> dict[str, Any]:
    """The ``ModelGraph`` configuration: Vivado backend, ``io_type``, the per-layer precisions."""
    if io_type not in IO_TYPES:
        raise UserError(f"--io-type {io_type} is not supported by this exporter's custom layers (they are written "
                        f"for {', '.join(IO_TYPES)})")
    return {"OutputDir": str(out_dir), "ProjectName": "unet", "Backend": "Vivado", "Part": part,
            "ClockPeriod": 5, "IOType": io_type,
            "HLSConfig": {"Model": {"Precision": "ap_int<32>", "ReuseFactor": 1, "Strategy": "Latency"},
                          "LayerName": precision}}


def build_hls_model(engine: IntegerUNet, input_hw: tuple[int, int], out_dir: Path, part: str = "xcu250-figd2104-2L-e",
                    io_type: str = "io_parallel"):
    """The hls4ml ``ModelGraph`` of ``engine`` for one ``input_hw`` image (not yet written)."""
    from hls4ml.model import ModelGraph

    from .layers import register

    register("Vivado")
    layers, precision = layer_list(engine, input_hw)
    config = hls_config(out_dir, part, io_type, precision)
    return ModelGraph.from_layer_list(config, layers, [INPUT_NAME], [layers[-1]["name"]])
