"""How far each deployment engine agrees with the PyTorch model it was made from.

The engines: the packed file read back (:func:`unet.export.read_packed`), onnxruntime on the
plain ONNX export (:class:`unet.export.onnx.OnnxForward`, what ``--format onnx`` writes and
``predict --engine onnx`` runs) and the integer engine (:class:`unet.integer.IntegerUNet`,
``predict --engine integer``). :func:`compare_engine` runs one of them and the model (eval
mode, the layout the trainer builds) on one batch and counts what differs: pixels of the
masks at 0.5 and at 0.999, the largest probability difference and, where the engine has
activation codes, the codes that differ per quantized layer together with the part of them
that float rounding does not explain (see :class:`EngineComparison`).

``benchmarks/exactness.py`` measures every mode on models trained through the real trainer;
``tests/test_exactness.py`` asserts what holds.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from quantizer import ActivationQuantizer

from .model import UNet

_Q60_Q04 = ["quantization=FIXED", "activation_i_width=6", "activation_f_width=0", "weight_i_width=0",
            "weight_f_width=4"]
#: The quantization modes measured: name -> (label, ``-o key=value`` overrides of the EM
#: quick-start config, ``em/quickstart/config.yaml``). Normal has no codes and no integer model.
MODES: dict[str, tuple[str, list[str]]] = {
    "wrap_q6.0_q0.4": ("FIXED nearest wrap a Q6.0 / w Q0.4",
                       [*_Q60_Q04, "fixed_rounding=nearest", "fixed_overflow=wrap"]),
    "saturate_q6.0_q0.4": ("FIXED nearest saturate a Q6.0 / w Q0.4",
                           [*_Q60_Q04, "fixed_rounding=nearest", "fixed_overflow=saturate"]),
    "wrap_q3.3": ("FIXED nearest wrap a Q3.3 / w Q0.4",
                  ["quantization=FIXED", "activation_i_width=3", "activation_f_width=3", "weight_i_width=0",
                   "weight_f_width=4", "fixed_rounding=nearest", "fixed_overflow=wrap"]),
    "pow2_q6.0_q0.4": ("FIXED pow2 a Q6.0 / w Q0.4", [*_Q60_Q04, "fixed_rounding=pow2", "fixed_overflow=wrap"]),
    "int8": ("INT 8 / 8 bits", ["quantization=INT", "activation_i_width=8", "weight_i_width=8"]),
    "bnn": ("BNN", ["quantization=BNN"]),
    "ternary": ("Ternary (ternarytanh)", ["quantization=Ternary", "activation=ternarytanh"]),
    "wrap_q8.8": ("FIXED nearest wrap a Q8.8 / w Q8.8",
                  ["quantization=FIXED", "activation_i_width=8", "activation_f_width=8", "weight_i_width=8",
                   "weight_f_width=8", "fixed_rounding=nearest", "fixed_overflow=wrap"]),
}

#: The engines :func:`compare_engine` knows.
ENGINES = ("packed", "onnx", "integer")
#: Mask thresholds counted: the usual 0.5 and the paper's 0.999.
THRESHOLDS = (0.5, 0.999)


@dataclass
class EngineComparison:
    """One engine against the model on one batch.

    ``pixels``: mask pixels compared; ``mask_flips``: pixels whose mask differs, per threshold
    (``"0.5"``, ``"0.999"``); ``max_prob_diff``: largest ``|p_engine - p_model|``;
    ``bit_equal``: the probabilities are equal bit for bit. ``codes`` / ``code_flips``:
    activation codes compared and differing (all quantized layers; 0 / 0 for an engine or mode
    without codes), ``layer_flips`` per layer in forward order, ``first_flip`` the first layer
    whose codes differ (None when none). ``unexplained``: differing codes that float rounding
    does not explain: for ONNX the values where the PyTorch rule applied to onnxruntime's own
    input of that layer differs from onnxruntime's output; for the integer engine, fed the
    model's own input codes of each unit, the differing codes at positions where the model's
    float32 convolution was exact (:func:`unet.integer.compare.unit_mismatches`). 0 means every
    flip comes from float32 summation order or rounding, not from the rendering. ``error``:
    why the engine did not run (then the counts are empty).
    """

    engine: str
    pixels: int = 0
    mask_flips: dict[str, int] = field(default_factory=dict)
    max_prob_diff: float = 0.0
    bit_equal: bool = False
    codes: int = 0
    code_flips: int = 0
    layer_flips: dict[str, int] = field(default_factory=dict)
    first_flip: str | None = None
    unexplained: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def adversarial_inputs(images: Tensor, seed: int = 0) -> dict[str, Tensor]:
    """``images`` (B, 1, H, W in [0, 1]) and the inputs no training image looks like: the same
    images x1000, uniform noise in [0, 1), a constant 0.5 image and a zero image (same shape)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "validation": images,
        "x1000": images * 1000.0,
        "noise": torch.rand(images.shape, generator=g),
        "constant": torch.full(images.shape, 0.5),
        "zero": torch.zeros(images.shape),
    }


def trainer_layout(model: UNet) -> UNet:
    """``model`` on the CPU, in eval mode, laid out channels_last as :func:`unet.model.build_model`
    builds it (in place; returned for chaining)."""
    return model.to("cpu").to(memory_format=torch.channels_last).eval()


def packed_copy(model: UNet) -> UNet:
    """``model`` written with :func:`unet.export.write_packed` and read back with
    :func:`unet.export.read_packed` (through a temporary file), in eval mode."""
    from .export.packed import read_packed, write_packed

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.uqp"
        write_packed(model, path)
        return read_packed(path).eval()


def mask_counts(reference: Tensor, other: Tensor) -> tuple[dict[str, int], float, bool]:
    """Pixels whose mask differs at each of :data:`THRESHOLDS`, the largest probability
    difference and whether the two are bit-equal (NaN equal to NaN)."""
    flips = {str(t): int(((reference > t) != (other > t)).sum()) for t in THRESHOLDS}
    same = (reference == other) | (torch.isnan(reference) & torch.isnan(other))
    diff = (reference - other).abs()
    diff = diff[~torch.isnan(diff)]
    return flips, float(diff.max()) if diff.numel() else 0.0, bool(same.all())


@torch.no_grad()
def _quantizer_outputs(model: UNet, x: Tensor) -> dict[str, Tensor]:
    """Every activation quantizer's output of ``model(x)``, by module name, in forward order
    (quantizers of kind ``float``, Ternary's, which hold no codes, left out)."""
    out: dict[str, Tensor] = {}
    handles = [
        m.register_forward_hook(lambda _m, _a, o, name=name: out.__setitem__(name, o.detach().clone()))
        for name, m in model.named_modules() if isinstance(m, ActivationQuantizer) and m.spec.kind != "float"
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return out


def _code_counts(result: EngineComparison, layers: dict[str, int], sizes: dict[str, int]) -> None:
    result.layer_flips = layers
    result.codes = sum(sizes.values())
    result.code_flips = sum(layers.values())
    result.first_flip = next((name for name, n in layers.items() if n), None)


def compare_engine(model: UNet, engine: str, x: Tensor, onnx_threads: int | None = None) -> EngineComparison:
    """Run ``engine`` (one of :data:`ENGINES`) built from ``model`` and the model itself on
    ``x``; ``model`` must be in eval mode on the CPU. ``onnx_threads``: onnxruntime's
    intra-op threads (default: torch's)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    result = EngineComparison(engine)
    x = x.to("cpu", torch.float32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = model(x)
    try:
        if engine == "packed":
            back = packed_copy(model)
            with torch.no_grad():
                got = back(x)
            ref, own = _quantizer_outputs(model, x), _quantizer_outputs(back, x)
            flips = {k: int((ref[k] != own[k]).sum()) for k in ref}
            _code_counts(result, flips, {k: v.numel() for k, v in ref.items()})
        elif engine == "onnx":
            from .export.onnx import OnnxForward, compare_forward

            got = OnnxForward(model, tuple(x.shape[-2:]), threads=onnx_threads)(x)
            _, _, layers = compare_forward(model, x, threads=onnx_threads)
            layers = [la for la in layers if la.spec.kind != "float"]  # Ternary: float activations, no codes
            _code_counts(result, {la.name: la.flips for la in layers}, {la.name: la.values for la in layers})
            result.unexplained = sum(la.render_errors for la in layers)
        else:
            from .integer import IntegerUNet
            from .integer.compare import reference_codes, unit_mismatches

            integer = IntegerUNet.from_model(model)
            codes: dict[str, Tensor] = {}
            with torch.no_grad():
                got = integer._forward(x, codes)  # probabilities and codes in one pass
            if integer.fmt is not None:
                ref = reference_codes(model, x)
                _code_counts(result, {k: int((ref[k] != codes[k]).sum()) for k in ref},
                             {k: v.numel() for k, v in ref.items()})
                result.unexplained = sum(r["unexplained"] for r in unit_mismatches(model, integer, x).values())
    except (ValueError, RuntimeError) as exc:  # e.g. a Q8.8 threshold table too large for this input
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.pixels = expected.numel()
    result.mask_flips, result.max_prob_diff, result.bit_equal = mask_counts(expected, got)
    return result


def rate(count: int, total: int) -> float:
    """``count / total`` (0 for an empty total)."""
    return count / total if total else 0.0


def describe(result: EngineComparison) -> str:
    """One line: mask flips at 0.5 and 0.999, max difference, codes differing."""
    if result.error:
        return f"{result.engine}: not run ({result.error})"
    flips = ", ".join(f"{k}: {v}" for k, v in result.mask_flips.items())
    codes = f"; codes {result.code_flips}/{result.codes} (first {result.first_flip})" if result.codes else ""
    diff = "bit-equal" if result.bit_equal else f"max diff {result.max_prob_diff:.3g}"
    return f"{result.engine}: mask flips {flips} of {result.pixels}; {diff}{codes}"


__all__ = ["ENGINES", "MODES", "THRESHOLDS", "EngineComparison", "adversarial_inputs", "compare_engine", "describe",
           "mask_counts", "packed_copy", "rate", "trainer_layout"]
