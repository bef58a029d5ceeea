"""The integer U-Net: the trained fake-quant model's forward pass on integer codes.

See the package docstring (:mod:`unet.integer`) for what is integer and what stays float.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from quantizer import QuantConv2d, QuantSpec
from quantizer.fusion import OnePass

from ..errors import UserError
from ..model import Stage, UNet, upsample_cat, walk
from . import onednn
from .fast import FLOAT32_CODES, Int8Conv, float_codes, requantize, requantize_accumulator, unit_pass
from .formats import CodeFormat, code_format, codes_to_values, values_to_codes
from .kernels import (
    KERNELS,
    check_kernel,
    choose_kernel,
    conv3x3_codes,
    maxpool2_codes,
)
from .thresholds import ThresholdRequantizer

#: Upsampling gains two fractional bits per axis: codes at scale ``s / UP_GAIN``.
UP_GAIN = 16


def weight_codes(conv: QuantConv2d) -> tuple[Tensor, float]:
    """Int64 codes and scale of a conv's quantized weight, checked: ``codes * scale`` must
    equal :meth:`QuantConv2d.quantized_weight` exactly (else ValueError)."""
    with torch.no_grad():
        codes, scale = conv.weight_quant.codes(conv.weight)
        codes = codes.to(torch.int64)
        if not torch.is_tensor(scale) and torch.equal((codes.double() * scale).float(), conv.quantized_weight()):
            return codes, float(scale)
    raise ValueError(f"weight codes of {conv.weight_quant} do not reproduce the quantized weight")


@dataclass
class IntegerUnit:
    """One quantized ConvUnit: integer convolution, then the threshold requantizer."""

    name: str
    weights: Tensor  # int64 (O, C, 3, 3)
    requant: ThresholdRequantizer
    max_input_code: int
    weight_sums: int  # max over output channels of sum |w|
    weight_scale: float
    float_weights: dict[str, Tensor] = field(default_factory=dict)
    last_kernel: str = ""
    fast_conv: Int8Conv | None = None
    direct_conv: onednn.OneDnnConv | None = None
    one_pass: OnePass | None = None  # the fused requantization plan of the fast path
    direct_tried: bool = False  # whether the fast path looked for its oneDNN convolution yet

    def __call__(self, a: Tensor | onednn.ChannelBlocks, kernel: str) -> Tensor:
        """Output codes of input codes ``a`` (B C H W): int64 codes through the reference kernels
        and threshold tables, or float32 codes (channels_last, or channel blocks) through the fast
        path, which returns float32: oneDNN's int8 convolution (:mod:`.onednn`) where its float32
        sums are proven or checked exact, else int8 limb GEMMs (:mod:`.fast`), then direct
        requantization."""
        low, high = a.code_range() if isinstance(a, onednn.ChannelBlocks) else onednn.code_range(a)
        observed = max(-low, high)
        if observed > self.max_input_code:
            raise ValueError(f"{self.name}: input code {observed} above the format's bound {self.max_input_code}")
        bound = observed * self.weight_sums  # this batch's proof (<= the static bound)
        if isinstance(a, onednn.ChannelBlocks) or a.is_floating_point():
            if not self.direct_tried:  # once: the operator's probe and the weights' int8 form
                self.direct_tried = True
                if onednn.available() and onednn.OneDnnConv.accepts(self.weights):
                    self.direct_conv = onednn.OneDnnConv(self.weights, self.requant.acc_scale, self.requant.bias)
                    self.one_pass = unit_pass(self.requant)
            if self.direct_conv is not None:
                acc = self.direct_conv(a, low, high)
                codes = None if acc is None else requantize_accumulator(self.requant, acc, self.one_pass)
                if codes is not None:  # else a sum reached 2^24 or int32: the int8 GEMMs below
                    self.last_kernel = self.direct_conv.last_kernel
                    return codes
            if isinstance(a, onednn.ChannelBlocks):
                a = a.joined()
            if self.fast_conv is None and Int8Conv.accepts(self.weights):
                self.fast_conv = Int8Conv(self.weights)
            if self.fast_conv is not None:
                acc = self.fast_conv(a, observed)
                self.last_kernel = self.fast_conv.last_kernel
            else:  # weights too wide for int32 limb sums: the reference kernels, same codes
                kernel = choose_kernel(bound, observed, self.weights[0].numel())
                self.last_kernel = kernel
                acc = conv3x3_codes(a.to(torch.int64), self.weights, kernel, self.float_weights).permute(0, 2, 3, 1)
            return requantize(self.requant, acc, bound)
        terms = self.weights[0].numel()
        if kernel == "auto":
            kernel = choose_kernel(bound, observed, terms)
        else:
            check_kernel(kernel, bound, observed, terms)
        self.last_kernel = kernel
        acc = conv3x3_codes(a, self.weights, kernel, self.float_weights)
        return self.requant(acc)

    @property
    def static_bound(self) -> int:
        """Largest partial sum any input in the format can produce (``max|a| max_c sum|w_c|``)."""
        return self.max_input_code * self.weight_sums


class IntegerUNet:
    """Bit-true integer forward pass of a trained quantized :class:`~unet.model.UNet`.

    Build with :meth:`from_model`; call on a float (B, 1, H, W) tensor (H, W divisible by 8)
    to get probabilities like the float model; :meth:`forward_codes` returns the integer
    activation codes after every quantized unit (``enc1.0`` ... ``dec1.1``). Runs on the CPU.
    """

    def __init__(self, model: UNet, kernel: str = "auto", fast: bool = True) -> None:
        """Use :meth:`from_model`."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        self.model = model
        self.kernel = kernel
        self.fast = False
        wq, aq = model.weight_quant, model.act_quant
        self.mode = _mode_name(wq, aq)
        self.fmt: CodeFormat | None = None
        self.units: dict[str, IntegerUnit] = {}
        self.ternary: dict[str, tuple[Tensor, Tensor]] = {}
        if self.mode == "ternary":
            for unit_name, stage, unit in model.units():
                if not stage.float_weights:
                    codes, alpha = unit.conv.weight_quant.codes(unit.conv.weight)
                    self.ternary[unit_name] = (codes.float(), alpha.detach().reshape(1, -1, 1, 1))
            return
        self.fmt = code_format(aq)
        for unit_name, stage, unit in model.units():
            if stage.float_weights:
                continue
            conv = unit.conv
            codes, w_scale = weight_codes(conv)
            # a decoder block's first unit reads upsampled codes (and skips scaled to match)
            in_gain = UP_GAIN if stage.skip is not None and unit_name.endswith(".0") else 1
            in_max = self.fmt.max_code * in_gain
            sums = codes.abs().sum(dim=(1, 2, 3))
            # accumulators beyond 2^62 cannot occur in a batch the int64 kernels accept
            bound = torch.where(sums.double() * in_max >= 2.0**62, 2**62, sums * in_max)
            requant = ThresholdRequantizer(
                unit_name, conv.bias.detach(), self.fmt.scale / in_gain * w_scale, unit.act, unit.bn, self.fmt, bound
            )
            self.units[unit_name] = IntegerUnit(unit_name, codes, requant, in_max, int(sums.max()), w_scale)
        # the fast path holds codes in float32: every code, upsampled (x UP_GAIN), must be exact
        self.fast = fast and kernel == "auto" and self.fmt.max_code * UP_GAIN < FLOAT32_CODES

    @classmethod
    def from_model(cls, model: UNet, kernel: str = "auto", fast: bool = True) -> IntegerUNet:
        """The integer engine of ``model`` (copied to the CPU and put in eval mode: BatchNorm
        uses its running statistics, Dropout is off).

        ``kernel``: ``auto`` (per layer and batch, float32 where the bound proves exactness,
        else float64, else float64 on weight limbs, else int64), or force ``float32`` /
        ``float64`` / ``limbs`` / ``int64`` (a forced float kernel raises ValueError on a
        batch where it is not proven exact).
        ``fast`` (with ``kernel`` auto): the fast exact path (:mod:`.fast`: oneDNN's int8
        convolution with checked float32 sums, else int8 limb GEMMs with int32 accumulation, and
        direct requantization; codes equal the reference path's) wherever the activation
        format's codes are exact in float32, else the reference kernels.
        Raises :class:`~unet.errors.UserError` for a model without integer arithmetic
        (quantization Normal) or a combination of quantizers the engine does not cover.
        """
        model = copy.deepcopy(model).to("cpu").eval()
        return cls(model, kernel, fast)

    # --- forward --------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Probabilities (B, 1, H, W), float32, of images ``x`` (B, 1, H, W)."""
        return self._forward(x, None)

    @torch.no_grad()
    def forward_codes(self, x: Tensor) -> dict[str, Tensor]:
        """Int64 activation codes after every quantized unit (value = code * :attr:`scale`),
        keyed ``enc1.0`` ... ``dec1.1``; empty for Ternary (its activations are float)."""
        codes: dict[str, Tensor] = {}
        self._forward(x, codes)
        return codes

    @property
    def scale(self) -> float | None:
        """Value of activation code 1 (None for Ternary)."""
        return None if self.fmt is None else self.fmt.scale

    def kernels_used(self) -> dict[str, str]:
        """The convolution kernel each quantized unit ran in the last forward pass."""
        return {name: unit.last_kernel for name, unit in self.units.items()}

    def _forward(self, x: Tensor, record: dict[str, Tensor] | None) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"input H and W must be divisible by 8, got {tuple(x.shape[-2:])}")
        x = x.to("cpu", torch.float32)
        if self.mode == "ternary":
            return self._forward_ternary(x)
        m, fmt = self.model, self.fmt
        y = walk(x, lambda stage, a: self._block(stage, a, record), maxpool2_codes, self._join)
        # head: float, on the exact values of the last codes
        return torch.sigmoid(m.head(codes_to_values(y, fmt).contiguous(memory_format=_layout(m))))

    def _join(self, a: Tensor, skip: Tensor) -> Tensor | onednn.ChannelBlocks:
        """A decoder block's input: the upsampled codes (x UP_GAIN) beside the skip scaled to match;
        on the fast path as channel blocks the convolution reads without a joined copy."""
        blocks = onednn.ChannelBlocks((onednn.CodeBlock(a, upsampled=True), onednn.CodeBlock(skip, UP_GAIN)))
        return blocks if self.fast else blocks.joined()  # fast: formed as the convolution's bytes are

    def _block(self, stage: Stage, a: Tensor, record: dict[str, Tensor] | None) -> Tensor:
        """Output codes of one block. The first block (float weights) runs in float arithmetic
        (the model's own modules) on the float image and codes its output."""
        for i, unit in enumerate(self.model.block(stage)):
            name = f"{stage.name}.{i}"
            a = unit(a) if stage.float_weights else self.units[name](a, self.kernel)
            if record is not None:
                record[name] = values_to_codes(a, self.fmt) if stage.float_weights else a.to(torch.int64)
        if stage.float_weights:
            return float_codes(a, self.fmt) if self.fast else values_to_codes(a, self.fmt)
        return a

    def _forward_ternary(self, x: Tensor) -> Tensor:
        m = self.model
        x = x.contiguous(memory_format=_layout(m))

        def block(stage: Stage, a: Tensor) -> Tensor:
            if stage.float_weights:
                return m.block(stage)(a)
            for i, unit in enumerate(m.block(stage)):
                codes, alpha = self.ternary[f"{stage.name}.{i}"]
                # multiplier-free: sums of +-activations, then one float scale per channel
                y = nn.functional.conv2d(a, codes, None, padding=1) * alpha + unit.conv.bias.reshape(1, -1, 1, 1)
                a = unit.quant(unit.bn(unit.act(y)))
            return a

        y = walk(x, block, lambda a: nn.functional.max_pool2d(a, 2), upsample_cat)
        return torch.sigmoid(m.head(y))


def _layout(model: nn.Module) -> torch.memory_format:
    w = model.head.weight
    return torch.channels_last if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() \
        else torch.contiguous_format


def _mode_name(wq: QuantSpec, aq: QuantSpec) -> str:
    """The quantization mode of a (weight, activation) spec pair; UserError when the engine
    has no integer model of it."""
    if wq.kind == "float" and aq.kind == "float":
        raise UserError(
            "the model is not quantized (quantization Normal): it has no integer model; "
            "use the float engine"
        )
    pairs = {("fixed", "fixed"): "fixed", ("int", "int"): "int", ("binary", "binary"): "bnn",
             ("ternary", "float"): "ternary"}
    mode = pairs.get((wq.kind, aq.kind))
    if mode is None:
        raise UserError(
            f"the integer engine covers FIXED, INT, BNN and Ternary models; this one has "
            f"{wq} weights and {aq} activations"
        )
    return mode
