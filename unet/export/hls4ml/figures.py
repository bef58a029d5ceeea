"""Hardware figures of the integer U-Net: widths, accumulator bounds, weight memory and MACs.

Written beside the hls4ml project as ``hardware.json`` and ``hardware.md``. Latency and
resources need a vendor synthesis tool (not available here); the markdown gives its commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...integer.engine import UP_GAIN, IntegerUNet
from ...model import Stage, walk
from .build import signed_bits, unit_tables


def resolution_levels() -> dict[str, int]:
    """Stage name -> how many times smaller its images are than the input per axis (1 = full
    resolution), from the U-Net's wiring: each pooling doubles it, each upsampling halves it."""
    levels: dict[str, int] = {}

    def block(stage: Stage, factor: int) -> int:
        levels[stage.name] = factor
        return factor

    walk(1, block, lambda factor: 2 * factor, lambda factor, skip: factor // 2)
    return levels


def hardware_figures(engine: IntegerUNet, input_hw: tuple[int, int]) -> dict[str, Any]:
    """Per quantized unit: weight / input / output code widths (bits, signed), accumulator width
    needed for the engine's static bound, threshold count, weight memory (bits), MACs per output
    pixel of the layer and per pixel of the network's output; plus the float first block and head
    and the totals."""
    h, w = input_hw
    out_bits = signed_bits(engine.fmt.max_code)
    layers = []
    m = engine.model
    levels = resolution_levels()
    for name, stage, unit in m.units():
        if stage.float_weights:
            layers.append(_float_layer(name, unit.conv, levels[stage.name], h * w))
    for t in unit_tables(engine):
        o, c = t.weights.shape[:2]
        wbits = signed_bits(int(np.abs(t.weights).max()))
        macs = c * 9 * o
        div = levels[t.name.split(".")[0]]
        layers.append({
            "layer": t.name, "arithmetic": "integer", "in_channels": c, "out_channels": o,
            "weight_bits": wbits, "input_bits": signed_bits(t.max_input_code), "output_bits": out_bits,
            "accumulator_bound": t.acc_bound, "accumulator_bits": signed_bits(t.acc_bound),
            "thresholds_per_channel": int(t.thresholds.shape[1]),
            "weight_memory_bits": int(t.weights.size * wbits),
            "threshold_memory_bits": int(t.thresholds.size * (signed_bits(t.acc_bound) + 1)
                                         + t.codes.size * out_bits),
            "macs_per_layer_pixel": macs, "macs_per_output_pixel": macs / (div * div),
        })
    layers.append(_float_layer("head", m.head, 1, h * w))
    quantized = [x for x in layers if x["arithmetic"] == "integer"]
    return {
        "input_hw": [h, w], "mode": engine.mode, "weight_quant": str(m.weight_quant), "act_quant": str(m.act_quant),
        "activation_scale": engine.scale, "upsampling_gain": UP_GAIN, "layers": layers,
        "totals": {
            "integer_weight_memory_bits": sum(x["weight_memory_bits"] for x in quantized),
            "threshold_memory_bits": sum(x["threshold_memory_bits"] for x in quantized),
            "integer_macs_per_output_pixel": sum(x["macs_per_output_pixel"] for x in quantized),
            "float_macs_per_output_pixel": sum(x["macs_per_output_pixel"] for x in layers if x not in quantized),
            "max_accumulator_bits": max(x["accumulator_bits"] for x in quantized),
        },
        "synthesis": "not run: latency and resources need AMD Vitis HLS / Vivado (see hardware.md)",
    }


def _float_layer(name: str, conv, div: int, pixels: int) -> dict[str, Any]:
    o, c, kh, kw = conv.weight.shape
    macs = c * kh * kw * o
    return {"layer": name, "arithmetic": "float32 (host)", "in_channels": c, "out_channels": o, "weight_bits": 32,
            "weight_memory_bits": int(conv.weight.numel() * 32), "macs_per_layer_pixel": macs,
            "macs_per_output_pixel": macs / (div * div)}


SYNTHESIS = """Synthesis needs AMD's tools, which are not installed here. With Vitis HLS 2023.2 (or
Vivado HLS 2020.1) on the PATH, from this folder:

    vitis_hls -f build_prj.tcl "reset=1 synth=1 csim=0 cosim=0 validation=0 export=0 vsynth=0"

or from Python: `hls4ml.model.ModelGraph.build(csim=False, synth=True)` on the loaded project.
The latency and resource report is then `unet_prj/solution1/syn/report/unet_csynth.rpt`.
"""


def write_figures(figures: dict[str, Any], out_dir: Path) -> None:
    """``hardware.json`` and ``hardware.md`` (one table and the synthesis commands) in ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "hardware.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    rows = ["| layer | arithmetic | C -> O | weight bits | in / out bits | accumulator bits | weight memory bits "
            "| MACs / layer pixel | MACs / output pixel |", "|---|---|---|---|---|---|---|---|---|"]
    for x in figures["layers"]:
        io = f"{x.get('input_bits', '-')} / {x.get('output_bits', '-')}"
        rows.append(f"| {x['layer']} | {x['arithmetic']} | {x['in_channels']} -> {x['out_channels']} | "
                    f"{x['weight_bits']} | {io} | {x.get('accumulator_bits', '-')} | {x['weight_memory_bits']:,} | "
                    f"{x['macs_per_layer_pixel']:,} | {x['macs_per_output_pixel']:,.2f} |")
    t = figures["totals"]
    text = (f"# Hardware figures ({figures['mode']}: weights {figures['weight_quant']}, activations "
            f"{figures['act_quant']}; {figures['input_hw'][0]}x{figures['input_hw'][1]} input)\n\n"
            + "\n".join(rows)
            + f"\n\nInteger weight memory {t['integer_weight_memory_bits']:,} bits; threshold tables "
            f"{t['threshold_memory_bits']:,} bits; integer MACs per output pixel "
            f"{t['integer_macs_per_output_pixel']:,.2f} (float on the host: {t['float_macs_per_output_pixel']:,.2f}); "
            f"widest accumulator {t['max_accumulator_bits']} bits.\n\n" + SYNTHESIS)
    (out_dir / "hardware.md").write_text(text, encoding="utf-8")
