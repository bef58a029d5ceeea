"""Evaluation-mode fusion of ``ReLU -> BatchNorm -> activation quantizer`` on the CPU.

With running statistics, BatchNorm is a per-channel affine map ``y = x alpha_c + beta_c``, so
in evaluation (no gradient) the ReLU, the BatchNorm and the range reduction that INT and the
nearest-wrap rule need take one pass over memory (``unet_relu_bn`` in ``native.c``) instead of
three or four, and the quantizer rounds the result in place. ``alpha`` and ``beta`` are formed
as PyTorch's CPU kernel forms them; whether that kernel rounds its multiply-adds once (a build
with FMA contraction) or twice is found once per layout by comparing both forms with
``torch.nn.functional.batch_norm`` on a probe, and a layout where neither is bit-equal is not
fused. Rules that round each value alone (pow2, binary, saturate, whole-number wrap) are applied
to each piece of the BatchNorm output while it is in cache: one pass in all. The integer
engine does the same fold on integers (:mod:`unet.integer`).

:func:`relu_batchnorm_quantize` returns None wherever it does not apply (gradients, training
mode, hooks, other dtypes or devices, no kernels); the caller then runs the modules in turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnF
from torch import Tensor, nn

from . import functional as F
from . import native
from .modules import QuantSpec, quantize_float32

_modes: dict[str, bool | None] = {}


def _layout(x: Tensor) -> str:
    return "contiguous" if x.is_contiguous() else "channels_last"


def _probe(layout: str) -> bool | None:
    """Whether PyTorch's evaluation BatchNorm (after a ReLU) on ``layout`` tensors equals the
    kernel with fused (True) or separately rounded (False) multiply-adds; None when neither."""
    g = torch.Generator().manual_seed(0)
    channels = 37  # two vectors and a tail on any vector width
    x = torch.randn(3, channels, 9, 11, generator=g) * 4
    flat = x.view(-1)
    flat[:6] = torch.tensor([-0.0, 0.0, float("nan"), float("inf"), -float("inf"), 1e-40])
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    mean = torch.randn(channels, generator=g)
    var = torch.rand(channels, generator=g) * 3 + 1e-3
    weight = torch.randn(channels, generator=g)
    bias = torch.randn(channels, generator=g)
    expected = [nnF.batch_norm(torch.relu(x), mean, var, weight, bias, False, 0.1, 1e-5),
                nnF.batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-5)]
    for fused in (True, False):
        alpha, beta = native.bn_affine(mean, var, weight, bias, 1e-5, fused)
        got = []
        for relu in (True, False):
            out = torch.empty_like(x)
            native.relu_bn(x, out, alpha, beta, relu, fused, False)
            got.append(out)
        if all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(got, expected, strict=True)):
            return fused
    return None


def batchnorm_rounding(layout: str) -> bool | None:
    """The probed form for ``layout`` (``"contiguous"`` or ``"channels_last"``): True for fused
    multiply-adds, False for separate roundings, None when the kernel cannot match PyTorch."""
    if layout not in _modes:
        _modes[layout] = _probe(layout)
    return _modes[layout]


def _plain(t: Tensor | None) -> bool:
    return t is None or (t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous())


def _affine(bn: nn.BatchNorm2d, fused: bool) -> tuple[Tensor, Tensor]:
    """``alpha``, ``beta`` of ``bn``, cached on the module until a statistic or parameter changes."""
    tensors = (bn.running_mean, bn.running_var, bn.weight, bn.bias)
    key = (fused, float(bn.eps)) + tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)
    cached = getattr(bn, "_fused_affine", None)
    if cached is None or cached[0] != key:
        weight = None if bn.weight is None else bn.weight.detach()
        bias = None if bn.bias is None else bn.bias.detach()
        cached = (key, *native.bn_affine(bn.running_mean, bn.running_var, weight, bias, bn.eps, fused))
        bn._fused_affine = cached
    return cached[1], cached[2]


def _evaluation_batchnorm(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` is an affine map the kernel can take: evaluation mode, running statistics,
    contiguous float32 CPU vectors."""
    return (not bn.training and bn.running_mean is not None
            and all(_plain(t) for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias)))


def _batchnorm_form(bn: nn.BatchNorm2d, layout: str) -> tuple[bool, Tensor, Tensor] | None:
    """``(fused, alpha, beta)`` of ``bn`` as PyTorch computes it on ``layout`` tensors, or None
    where the kernel cannot match PyTorch there."""
    fused = batchnorm_rounding(layout)
    return None if fused is None else (fused, *_affine(bn, fused))


def applies(x: Tensor, bn: nn.BatchNorm2d) -> bool:
    """Whether :func:`relu_batchnorm_quantize` can run: no gradient, ``bn`` in evaluation mode with
    running statistics, float32 CPU tensors outside autocast, the kernels loaded."""
    return (not torch.is_grad_enabled() and _evaluation_batchnorm(bn) and x.dim() == 4 and native.applies(x)
            and not torch.is_autocast_enabled("cpu"))


@dataclass(frozen=True)
class OnePass:
    """``spec(bn(relu(y)))`` as one native pass (:func:`quantizer.native.relu_bn` arguments):
    BatchNorm's ``alpha``, ``beta`` and rounding form, and the rule as ``post``."""

    relu: bool
    alpha: Tensor
    beta: Tensor
    fused: bool
    post: native.PostOp


def one_pass(relu: bool, bn: nn.BatchNorm2d, spec: QuantSpec, layout: str, code_scale: float = 0.0) -> OnePass | None:
    """The plan of ``spec(bn(relu(y)))`` on ``layout`` tensors as one pass, for a rule that rounds
    each value alone (:func:`quantizer.functional.single_pass_rule`); ``code_scale`` (when not 0):
    the pass then writes ``trunc(q code_scale)``. None where the fusion does not apply (a tensor
    check apart: :func:`applies`)."""
    if spec.kind == "ternary" or native.library() is None or not _evaluation_batchnorm(bn):
        return None
    form = _batchnorm_form(bn, layout)
    post = F.single_pass_rule(spec.kind, spec.i_bits, spec.f_bits, spec.rounding, spec.overflow,
                              spec.pow2_min_exponent)
    if form is None or post is None:
        return None
    post.code_scale = code_scale
    fused, alpha, beta = form
    return OnePass(relu, alpha, beta, fused, post)


def relu_batchnorm_quantize(x: Tensor, relu: bool, bn: nn.BatchNorm2d, spec: QuantSpec) -> Tensor | None:
    """``spec(bn(relu(x)))`` (``bn(x)`` when not ``relu``) in evaluation, bit-equal to the modules
    run in turn, in a new tensor of ``x``'s layout; None where the fusion does not apply."""
    form = None if spec.kind == "ternary" or not applies(x, bn) else _batchnorm_form(bn, _layout(x))
    if form is None:
        return None
    fused, alpha, beta = form
    y = torch.empty_like(x)
    post = F.single_pass_rule(spec.kind, spec.i_bits, spec.f_bits, spec.rounding, spec.overflow,
                              spec.pow2_min_exponent)
    if post is not None:  # one pass: BatchNorm and the rounding
        native.relu_bn(x, y, alpha, beta, relu, fused, want_range=False, post=post)
        return y
    wrap = spec.kind == "fixed" and spec.rounding == "nearest" and spec.overflow == "wrap" and spec.f_bits > 0
    found = native.relu_bn(x, y, alpha, beta, relu, fused, want_range=spec.kind == "int" or wrap)
    if spec.kind == "int" and found is not None:
        return F.int_minmax_forward(y, spec.i_bits, True, value_range=found)
    if wrap and found is not None:
        return F.fixed_point_nearest_wrap(y, spec.i_bits, spec.f_bits, True, value_range=found)
    return quantize_float32(spec, y, True)
