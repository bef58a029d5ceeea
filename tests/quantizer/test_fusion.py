"""Evaluation-mode fusion of ReLU -> BatchNorm -> activation quantizer (quantizer.fusion) gives
the values of the modules run one after another, and steps aside wherever it must."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quantizer import FLOAT, QuantSpec, fusion, native
from unet.model import UNet, quant_specs

from ..helpers.equality import bit_equal
from ..helpers.quantizer_cases import SPECS

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"kernels not built: {native.status()}")


def batchnorm(channels: int, seed: int, affine: bool = True) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, affine=affine).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 4 + 1e-4)
        if affine:
            bn.weight.copy_(torch.randn(channels, generator=g) * 2)
            bn.bias.copy_(torch.randn(channels, generator=g))
    return bn


def activations(seed: int) -> list[torch.Tensor]:
    """Conv outputs of several shapes (a tail on any vector width, single pixels, a long one that
    splits between threads) in both layouts, with zeros of both signs, NaN and infinities."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in [(2, 37, 9, 11), (1, 16, 1, 1), (3, 5, 64, 70), (1, 64, 40, 40)]:
        x = torch.randn(*shape, generator=g) * 3
        x.view(-1)[:7] = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-40, -5.0])
        out += [x.contiguous(), x.contiguous(memory_format=torch.channels_last)]
    return out


def reference(x: torch.Tensor, relu: bool, bn: nn.BatchNorm2d, spec: QuantSpec) -> torch.Tensor:
    with native.enabled(False), torch.no_grad():
        return spec(bn(torch.relu(x) if relu else x))


@pytest.mark.parametrize("spec", SPECS + [FLOAT], ids=str)
def test_fused_relu_batchnorm_quantizer_equals_the_modules_in_turn(spec: QuantSpec) -> None:
    for k, x in enumerate(activations(1)):
        for relu in (True, False):
            bn = batchnorm(x.shape[1], k, affine=k % 3 != 2)
            with torch.no_grad():
                got = fusion.relu_batchnorm_quantize(x, relu, bn, spec)
            assert got is not None
            expected = reference(x, relu, bn, spec)
            assert bit_equal(got, expected), (spec, x.shape, relu)
            assert got.stride() == x.stride()


@pytest.mark.parametrize("mode", ["normal", "nearest", "saturate", "pow2", "int", "bnn", "ternary"])
def test_unet_eval_forward_is_bit_equal_to_the_pytorch_rules(mode: str) -> None:
    specs = {"normal": quant_specs("normal", 0, 0, 0, 0), "nearest": quant_specs("fixed", 2, 2, 0, 4),
             "saturate": quant_specs("fixed", 2, 2, 0, 4, fixed_overflow="saturate"),
             "pow2": quant_specs("fixed", 6, 0, 0, 4, fixed_rounding="pow2"), "int": quant_specs("int", 8, 0, 8, 0),
             "bnn": quant_specs("bnn", 0, 0, 0, 0), "ternary": quant_specs("ternary", 0, 0, 0, 0)}[mode]
    torch.manual_seed(0)
    model = UNet(8, *specs)
    x = torch.rand(2, 1, 48, 40)
    with torch.no_grad():
        model.train()
        for _ in range(3):  # running statistics away from their initial values
            model(x)
    model.eval()
    for layout in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=layout)
        xl = x.contiguous(memory_format=layout)
        with torch.no_grad():
            fused = model(xl)
            with native.enabled(False):
                plain = model(xl)
        assert bit_equal(fused, plain), layout


def test_fusion_steps_aside_for_gradients_training_mode_and_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = fusion.relu_batchnorm_quantize
    monkeypatch.setattr("unet.model.relu_batchnorm_quantize", lambda *a: calls.append(1) or original(*a))
    model = UNet(4, *quant_specs("fixed", 6, 0, 0, 4, fixed_rounding="pow2")).eval()
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        model(x)
    assert len(calls) == 14  # every unit
    calls.clear()
    model(x)  # gradients on
    model.train()
    with torch.no_grad():
        model(x)
    assert calls == []
    model.eval()
    model.enc1[0][2].train()  # val_bn_mode: train puts BatchNorm alone in training mode
    with torch.no_grad():
        model(x)
    assert len(calls) == 13  # every unit but the one in training mode
    calls.clear()
    model.eval()
    seen = []
    handle = model.dec1[1][2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen == [torch.Size([1, 4, 16, 16])]
    assert len(calls) == 13  # only the units without the hook


def test_cached_batchnorm_affine_follows_changed_statistics() -> None:
    bn = batchnorm(16, 0)
    spec = QuantSpec("fixed", 6, 0, "pow2")
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fusion.relu_batchnorm_quantize(x, True, bn, spec)
        bn.running_mean.add_(0.5)
        bn.weight.mul_(-1)
        got = fusion.relu_batchnorm_quantize(x, True, bn, spec)
        bn.load_state_dict(batchnorm(16, 7).state_dict())
        again = fusion.relu_batchnorm_quantize(x, True, bn, spec)
    assert bit_equal(got, reference(x, True, bn_copy_before_load(bn, 0), spec))
    assert bit_equal(again, reference(x, True, bn, spec))


def bn_copy_before_load(_: nn.BatchNorm2d, seed: int) -> nn.BatchNorm2d:
    bn = batchnorm(16, seed)
    with torch.no_grad():
        bn.running_mean.add_(0.5)
        bn.weight.mul_(-1)
    return bn


def test_a_batchnorm_the_kernel_cannot_match_is_not_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = native.relu_bn

    def off_by_one_ulp(x, out, *args, **kwargs):
        found = real(x, out, *args, **kwargs)
        out[-1, -1, -1, -1] = torch.nextafter(out[-1, -1, -1, -1], torch.tensor(float("inf")))
        return found

    monkeypatch.setattr(native, "relu_bn", off_by_one_ulp)
    monkeypatch.setattr(fusion, "_modes", {})
    assert fusion.batchnorm_rounding("channels_last") is None
    x = torch.randn(1, 8, 4, 4)
    with torch.no_grad():
        assert fusion.relu_batchnorm_quantize(x, True, batchnorm(8, 0), QuantSpec("binary")) is None
    monkeypatch.undo()
    assert fusion.batchnorm_rounding("channels_last") in (True, False)
