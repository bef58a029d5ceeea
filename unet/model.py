"""The medicaltorch-style U-Net of the original code (SPEC §4), with quantized layers.

Every convolution is followed by ``activation -> BatchNorm -> [Dropout2d] -> activation
quantizer``. Weights are quantized in every convolution except the first block's two and
the 1-channel head; activations are quantized after every BatchNorm, first block included.
Biases, BatchNorm, upsampled tensors and the head output stay float.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quantizer import FLOAT, ActivationQuantizer, QuantConv2d, QuantSpec
from quantizer.fusion import relu_batchnorm_quantize
from quantizer.modules import DEFAULT_POW2_MIN_EXPONENT

from .errors import DataError, short_repr

if TYPE_CHECKING:
    from .config import Config

ACTIVATIONS = ("relu", "tanh", "ternarytanh")
#: Config keys that change the network's parameters or its forward pass: the config a checkpoint
#: must store for :func:`build_model` to rebuild its network.
MODEL_KEYS = ("quantization", "activation_i_width", "activation_f_width", "weight_i_width", "weight_f_width",
              "fixed_rounding", "fixed_overflow", "activation", "base_channels", "dropout", "pow2_min_exponent")


T = TypeVar("T")


@dataclass(frozen=True)
class Stage:
    """One block of the U-Net (a :class:`DoubleConv`, the model's attribute ``name``).

    ``kind`` is ``enc``, ``bottom`` or ``dec``; the block outputs ``width * base_channels``
    channels. Its input is the previous block's output, max-pooled 2x2 first when ``pool``; a
    decoder block (``skip`` set) instead takes ``[upsampled, skip output]``: the previous output
    upsampled bilinearly x2, concatenated on channels with the output of block ``skip``.
    ``float_weights``: the block's convolutions keep float weights (the first block).
    """

    name: str
    kind: str
    width: int
    pool: bool = False
    skip: str | None = None
    float_weights: bool = False


#: The U-Net's wiring, blocks in forward order: the one description that the model's
#: construction and forward pass, the ONNX/QONNX exporters and the integer engine all walk
#: (:func:`walk`). The 3x3 head convolution (``head``, ``base_channels -> 1``, then a sigmoid)
#: follows the last block.
TOPOLOGY: tuple[Stage, ...] = (
    Stage("enc1", "enc", 1, float_weights=True),
    Stage("enc2", "enc", 2, pool=True),
    Stage("enc3", "enc", 4, pool=True),
    Stage("bottom", "bottom", 4, pool=True),
    Stage("dec3", "dec", 4, skip="enc3"),
    Stage("dec2", "dec", 2, skip="enc2"),
    Stage("dec1", "dec", 1, skip="enc1"),
)
#: Channels of the model's input image.
IN_CHANNELS = 1
#: Number of 2x poolings on the way down: H and W must be multiples of ``2 ** DEPTH``.
DEPTH = sum(stage.pool for stage in TOPOLOGY)
_SKIPS = frozenset(stage.skip for stage in TOPOLOGY if stage.skip is not None)


def walk(x: T, block: Callable[[Stage, T], T], pool: Callable[[T], T], up_cat: Callable[[T, T], T]) -> T:
    """Apply the U-Net's wiring (:data:`TOPOLOGY`) to ``x`` and return the last block's output
    (the head's input).

    For each stage in order: ``pool(x)`` when the stage pools, ``up_cat(x, skip)`` when it is a
    decoder stage (``skip`` the output its ``skip`` stage returned), then ``x = block(stage, x)``.
    ``x`` can be anything the three callables agree on: tensors, codes, graph tensor names or
    channel counts. A skip output is kept only until its decoder stage has used it.
    """
    kept: dict[str, T] = {}
    for stage in TOPOLOGY:
        if stage.pool:
            x = pool(x)
        if stage.skip is not None:
            x = up_cat(x, kept.pop(stage.skip))
        x = block(stage, x)
        if stage.name in _SKIPS:
            kept[stage.name] = x
    return x


def stage_channels(base_channels: int) -> dict[str, tuple[int, int]]:
    """``{stage name: (input channels, output channels)}`` at width ``base_channels``, derived
    from :data:`TOPOLOGY` (e.g. ``dec3``: ``8c -> 4c``, the upsampled ``4c`` plus the ``4c`` skip)."""
    channels: dict[str, tuple[int, int]] = {}

    def block(stage: Stage, c_in: int) -> int:
        channels[stage.name] = (c_in, stage.width * base_channels)
        return stage.width * base_channels

    walk(IN_CHANNELS, block, lambda c: c, lambda c, skip: c + skip)
    return channels


class TernaryTanh(nn.Module):
    """Soft ternary activation of TernaryNet (Heinrich et al.):
    ``y = 0.5 tanh(b (2x - 1)) + 0.5 tanh(b (2x + 1))``, values in (-1, 1) with plateaus at
    -1, 0 and 1 that sharpen as ``b`` grows. ``beta`` is a buffer, so it is saved with the
    model's state (the original forgot it and evaluated with b = 3).
    """

    def __init__(self, beta: float = 3.0) -> None:
        super().__init__()
        self.register_buffer("beta", torch.tensor(float(beta)))

    def forward(self, x: Tensor) -> Tensor:
        b = self.beta
        return 0.5 * torch.tanh(b * (2 * x - 1)) + 0.5 * torch.tanh(b * (2 * x + 1))

    def extra_repr(self) -> str:
        return f"beta={float(self.beta):.3f}"


def make_activation(name: str) -> nn.Module:
    """The nonlinearity named by the config's ``activation`` key."""
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "ternarytanh":
        return TernaryTanh()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class ConvUnit(nn.Sequential):
    """``conv3x3 -> activation -> BatchNorm -> [Dropout2d] -> activation quantizer``.

    Dropout sits before the quantizer so the unit's output stays on the quantization grid.
    The layers are reached by name (:attr:`conv`, :attr:`act`, :attr:`bn`, :attr:`drop`,
    :attr:`quant`); they stay children ``0`` ... ``4`` of the Sequential, so state-dict keys
    (``enc1.0.0.weight``, ``enc1.0.2.running_mean``) are those of every checkpoint written.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        weight_quant: QuantSpec,
        act_quant: QuantSpec,
        activation: str,
        dropout: float,
        bn_momentum: float,
    ) -> None:
        layers: list[nn.Module] = [
            QuantConv2d(in_channels, out_channels, 3, padding=1, weight_quant=weight_quant),
            make_activation(activation),
            nn.BatchNorm2d(out_channels, momentum=bn_momentum),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        # in place: the BatchNorm (or Dropout) output is fresh and not needed for backward
        layers.append(ActivationQuantizer(act_quant, inplace=True))
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """The layers in turn; in evaluation without gradients, ReLU, BatchNorm (Dropout is the
        identity there) and the activation quantizer run fused on the CPU
        (:func:`quantizer.fusion.relu_batchnorm_quantize`), with the same values."""
        if self.training or torch.is_grad_enabled() or not isinstance(self.act, nn.ReLU) or _hooked(self):
            return super().forward(x)
        y = self.conv(x)
        fused = relu_batchnorm_quantize(y, True, self.bn, self.quant.spec)
        if fused is not None:
            return fused
        for layer in list(self)[1:]:
            y = layer(y)
        return y

    @property
    def conv(self) -> QuantConv2d:
        """The 3x3 convolution (quantized weights, or float ones in the first block)."""
        return self[0]

    @property
    def act(self) -> nn.Module:
        """The nonlinearity (ReLU, Tanh or :class:`TernaryTanh`)."""
        return self[1]

    @property
    def bn(self) -> nn.BatchNorm2d:
        """The BatchNorm after the nonlinearity."""
        return self[2]

    @property
    def drop(self) -> nn.Dropout2d | None:
        """The Dropout2d before the quantizer, or None when the model has no dropout."""
        return self[3] if len(self) == 5 else None

    @property
    def quant(self) -> ActivationQuantizer:
        """The activation quantizer, the unit's last layer."""
        return self[len(self) - 1]


def _hooked(unit: nn.Module) -> bool:
    """Whether a forward hook (global, or on ``unit`` or a module in it) or a training-mode module
    in it would see a difference if its layers ran fused."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m.training for m in unit.modules())


class DoubleConv(nn.Sequential):
    """Two :class:`ConvUnit` in a row (one U-Net block); iterate over it for its units."""

    def __init__(self, in_channels: int, out_channels: int, **unit_kwargs) -> None:
        super().__init__(
            ConvUnit(in_channels, out_channels, **unit_kwargs),
            ConvUnit(out_channels, out_channels, **unit_kwargs),
        )


class UNet(nn.Module):
    """U-Net for (B, 1, H, W) inputs with H, W divisible by 8; returns sigmoid probabilities.

    Widths with ``c = base_channels``: encoder 1->c->c, pool, c->2c, pool, 2c->4c, pool,
    bottom 4c->4c; decoder: bilinear x2 upsampling (align_corners False), concatenation
    ``[upsampled, skip]``, then 8c->4c, 6c->2c, 3c->c; head 3x3 conv c->1 and sigmoid.
    At ``c = 64`` the full-precision model has 4,837,249 parameters.

    Convolutions with quantized weights start from ``U(-1, 1)`` weights and zero bias (the
    original's init for quantized layers); float convolutions keep PyTorch's default init.
    """

    def __init__(
        self,
        base_channels: int = 64,
        weight_quant: QuantSpec = FLOAT,
        act_quant: QuantSpec = FLOAT,
        activation: str = "relu",
        dropout: float = 0.0,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        c = base_channels
        common = dict(activation=activation, dropout=dropout, bn_momentum=bn_momentum)
        for stage, (c_in, c_out) in zip(TOPOLOGY, stage_channels(c).values(), strict=True):
            specs = dict(weight_quant=FLOAT if stage.float_weights else weight_quant, act_quant=act_quant)
            self.add_module(stage.name, DoubleConv(c_in, c_out, **specs, **common))
        self.head = nn.Conv2d(c, 1, 3, padding=1)
        self.base_channels = c
        self.weight_quant = weight_quant
        self.act_quant = act_quant
        if weight_quant.kind != "float":
            for conv in self.quantized_convs():
                nn.init.uniform_(conv.weight, -1.0, 1.0)
                nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities (B, 1, H, W) of images ``x`` (B, 1, H, W): :func:`walk` with this
        model's blocks, 2x2 max pooling and :func:`upsample_cat`, then the head and a sigmoid."""
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"input H and W must be divisible by 8, got {tuple(x.shape[-2:])}")
        y = walk(x, lambda stage, a: self.block(stage)(a), lambda a: F.max_pool2d(a, 2), upsample_cat)
        return torch.sigmoid(self.head(y))

    def block(self, stage: Stage) -> DoubleConv:
        """The block of ``stage``."""
        return getattr(self, stage.name)

    def units(self) -> Iterator[tuple[str, Stage, ConvUnit]]:
        """Every :class:`ConvUnit` in forward order as ``(name, stage, unit)``, named
        ``<block>.<index>`` as in the module tree (``enc1.0`` ... ``dec1.1``)."""
        for stage in TOPOLOGY:
            for i, unit in enumerate(self.block(stage)):
                yield f"{stage.name}.{i}", stage, unit

    def quantized_convs(self) -> Iterator[QuantConv2d]:
        """The convolutions whose weights are quantized (all but the first block and head)."""
        for module in self.modules():
            if isinstance(module, QuantConv2d) and module.weight_quant.kind != "float":
                yield module

    def set_beta(self, beta: float) -> None:
        """Set ``b`` of every :class:`TernaryTanh` (the ternarytanh schedule)."""
        for module in self.modules():
            if isinstance(module, TernaryTanh):
                module.beta.fill_(beta)

    def beta(self) -> float | None:
        """The current ternarytanh ``b``, or None when the model has no TernaryTanh."""
        for module in self.modules():
            if isinstance(module, TernaryTanh):
                return float(module.beta)
        return None


def upsample(x: Tensor) -> Tensor:
    """Bilinear x2 upsampling, ``align_corners=False`` (the decoder's)."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def upsample_cat(x: Tensor, skip: Tensor) -> Tensor:
    """A decoder block's input: ``[upsample(x), skip]`` on the channel axis."""
    return torch.cat([upsample(x), skip], dim=1)


def quant_specs(
    quantization: str,
    activation_i_width: int,
    activation_f_width: int,
    weight_i_width: int,
    weight_f_width: int,
    fixed_rounding: str = "nearest",
    fixed_overflow: str = "wrap",
    pow2_min_exponent: int = DEFAULT_POW2_MIN_EXPONENT,
) -> tuple[QuantSpec, QuantSpec]:
    """Map the config's quantization mode to ``(weight_quant, act_quant)`` specs.

    Normal: float/float. FIXED: Qwi.wf weights and Qai.af activations (pow2 rounding flushes
    magnitudes below ``2^pow2_min_exponent`` to 0, weights and activations). INT: ``weight_i_width``
    and ``activation_i_width`` bits (fractional widths unused). BNN: sign/sign. Ternary:
    TWN weights, float activations.
    """
    mode = quantization.lower()
    if mode == "normal":
        return FLOAT, FLOAT
    if mode == "fixed":
        return (
            QuantSpec("fixed", weight_i_width, weight_f_width, fixed_rounding, fixed_overflow, pow2_min_exponent),
            QuantSpec("fixed", activation_i_width, activation_f_width, fixed_rounding, fixed_overflow,
                      pow2_min_exponent),
        )
    if mode == "int":
        return QuantSpec("int", weight_i_width), QuantSpec("int", activation_i_width)
    if mode == "bnn":
        return QuantSpec("binary"), QuantSpec("binary")
    if mode == "ternary":
        return QuantSpec("ternary"), FLOAT
    raise ValueError(f"unknown quantization {quantization!r}")


def build_model(cfg: Config) -> UNet:
    """The U-Net the config describes (SPEC §4)."""
    weight_quant, act_quant = quant_specs(
        cfg.quantization,
        cfg.activation_i_width,
        cfg.activation_f_width,
        cfg.weight_i_width,
        cfg.weight_f_width,
        cfg.fixed_rounding,
        cfg.fixed_overflow,
        cfg.pow2_min_exponent,
    )
    model = UNet(cfg.base_channels, weight_quant, act_quant, cfg.activation, cfg.dropout)
    return model.to(memory_format=torch.channels_last)  # ~10% faster steps on CPU: benchmarks/bench_training.py


def build_stored_model(cfg: Config, checkpoint: Path) -> UNet:
    """:func:`build_model` of the config stored in ``checkpoint``; DataError naming the
    checkpoint (and at most 200 characters of the reason) when that config cannot build one."""
    try:
        return build_model(cfg)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"checkpoint {checkpoint}: its stored config cannot build a model ({type(exc).__name__}: "
                        f"{short_repr(str(exc))})") from None
