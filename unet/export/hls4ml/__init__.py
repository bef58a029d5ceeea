"""hls4ml export: an hls4ml C++ project of the integer U-Net whose C simulation equals
:class:`~unet.integer.IntegerUNet` code for code (issue 26; docs/hardware.md).

Host split: the float first block (and its activation quantizer) and the float head + sigmoid
run on the host, as in the integer engine; the HLS model maps the first block's codes to the
last unit's codes with integer arithmetic only (:mod:`.build`, :mod:`.layers`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...model import UNet

DEFAULT_PART = "xcu250-figd2104-2L-e"


def export_hls4ml(model: UNet, out_dir: Path, input_hw: tuple[int, int], metadata: dict[str, Any],
                  io_type: str = "io_parallel", part: str = DEFAULT_PART, check: Path | None = None,
                  layers: bool = False) -> dict[str, Any]:
    """Write the hls4ml project of ``model`` for ``input_hw`` images into ``out_dir`` with
    ``hardware.json`` / ``hardware.md`` and ``export.json`` (``metadata``); with ``check`` (an image
    or a folder) compile it with g++, run the C simulation on those images plus
    :func:`.check.adversarial_inputs` and compare with the integer engine (``layers``: every unit).
    Returns a summary; raises :class:`.check.CheckFailed` when any code differs and
    :class:`~unet.errors.UserError` for a mode without an exact rendering."""
    from ...integer import IntegerUNet
    from ..onnx import check_input_hw
    from .build import build_hls_model
    from .check import adversarial_inputs, check_or_raise, compare, load_images
    from .compile import compile_project, write_project
    from .figures import hardware_figures, write_figures

    hw = check_input_hw(input_hw)
    engine = IntegerUNet.from_model(model)
    out_dir = Path(out_dir)
    hls_model = build_hls_model(engine, hw, out_dir, part, io_type)
    hls_model.config.trace_output = True  # lets --layers read every unit without a second compile
    write_project(hls_model)
    figures = hardware_figures(engine, hw)
    write_figures(figures, out_dir)
    summary: dict[str, Any] = {"input_hw": list(hw), "io_type": io_type, "part": part, "mode": engine.mode}
    if check is not None:
        images, names = load_images(Path(check), hw)
        summary["compile_seconds"] = round(compile_project(hls_model), 1)
        import torch

        x = torch.cat([images, adversarial_inputs(hw)])
        result = compare(hls_model, engine, x, layers)
        result["image_names"] = names + ["noise50", "checkerboard100", "const+1e4", "const-1e4"]
        summary["check"] = result
    (out_dir / "export.json").write_text(json.dumps({**summary, "metadata": metadata}, indent=2, default=str) + "\n",
                                         encoding="utf-8")
    if check is not None:
        check_or_raise(summary["check"])
    return summary
