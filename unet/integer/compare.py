"""Layer-by-layer comparison of the integer engine with the fake-quant model.

The same comparison holds an accelerator against the engine: dump its activation codes per
unit and compare them with :meth:`IntegerUNet.forward_codes` as :func:`code_mismatches` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model import UNet
from .engine import IntegerUNet
from .formats import code_format, values_to_codes
from .kernels import conv3x3_codes


@torch.no_grad()
def reference_codes(model: UNet, x: Tensor) -> dict[str, Tensor]:
    """The fake-quant model's activation codes per unit: its quantized activations divided by
    the format's scale (``trunc(q / s)``, exact for every value of the format), keyed like
    :meth:`IntegerUNet.forward_codes`. The model runs as given (put it in eval mode first)."""
    fmt = code_format(model.act_quant)
    out: dict[str, Tensor] = {}
    handles = []
    for unit_name, _, unit in model.units():

        def hook(module, inputs, output, name=unit_name):  # noqa: ARG001
            out[name] = values_to_codes(output, fmt)

        handles.append(unit.quant.register_forward_hook(hook))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def code_mismatches(model: UNet, engine: IntegerUNet, x: Tensor) -> dict[str, int]:
    """Number of activation codes per unit where the engine differs from the fake-quant model
    on ``x`` (0 everywhere = bit-exact)."""
    ref = reference_codes(model, x)
    got = engine.forward_codes(x)
    return {name: int((ref[name] != got[name]).sum()) for name in ref}


@torch.no_grad()
def unit_mismatches(model: UNet, engine: IntegerUNet, x: Tensor) -> dict[str, dict[str, int]]:
    """Layer-by-layer comparison without propagation: every integer unit of the engine is fed
    the fake-quant model's own input codes of that unit, and its output codes are compared
    with the model's.

    Returns, per unit, ``mismatches`` (codes that differ), ``inexact`` (outputs of the
    model's float32 convolution that differ from the exact integer sum plus bias rounded once
    to float32, i.e. where the model itself rounded) and ``unexplained`` (mismatching codes
    at positions where the model's convolution was exact; 0 when the engine is bit-true).
    INT units also report ``range_differs``: the model's per-tensor min or max came from a
    rounded element, which moves every code's thresholds; their ``unexplained`` count is then
    taken with the model's range given to the engine.
    """
    fmt = engine.fmt
    if fmt is None:
        return {}
    seen: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    handles = []
    model_units = {unit_name: unit for unit_name, _, unit in model.units()}
    for name in engine.units:
        conv, quant = model_units[name].conv, model_units[name].quant
        parts: dict[str, Tensor] = {}

        def pre(module, inputs, parts=parts):  # noqa: ARG001
            parts["in"] = inputs[0].detach().clone()

        def post(module, inputs, output, parts=parts):  # noqa: ARG001
            parts["conv"] = output.detach().clone()

        def quant_in(module, inputs, parts=parts):  # noqa: ARG001
            parts["range"] = torch.aminmax(inputs[0])  # before the in-place quantizer

        def out(module, inputs, output, parts=parts, name=name):  # noqa: ARG001
            seen[name] = (parts["in"], parts["conv"], values_to_codes(output, fmt), parts["range"])

        handles += [conv.register_forward_pre_hook(pre), conv.register_forward_hook(post),
                    quant.register_forward_pre_hook(quant_in), quant.register_forward_hook(out)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    report = {}
    for name, unit in engine.units.items():
        inputs, conv_out, ref, (low, high) = seen[name]
        in_scale = unit.requant.acc_scale / unit.weight_scale
        a = torch.div(inputs.double(), in_scale, rounding_mode="trunc").to(torch.int64)
        acc = conv3x3_codes(a, unit.weights, "int64")
        exact = (acc.double() * unit.requant.acc_scale
                 + unit.requant.bias.reshape(1, -1, 1, 1)).float()
        inexact = conv_out != exact
        got = unit.requant(acc)
        wrong = got != ref
        report[name] = {"mismatches": int(wrong.sum()), "inexact": int(inexact.sum()),
                        "unexplained": int((wrong & ~inexact).sum())}
        if fmt.spec.kind == "int":
            c = acc.shape[1]
            flat = acc.transpose(0, 1).reshape(c, -1) * unit.requant.orientation[:, None]
            own = unit.requant._int_range(flat.amin(dim=1), flat.amax(dim=1))
            differs = bool(own[0] != low or own[1] != high - low)
            report[name]["range_differs"] = differs
            if differs:
                wrong = unit.requant(acc, (low, high - low)) != ref
                report[name]["unexplained"] = int((wrong & ~inexact).sum())
    return report
