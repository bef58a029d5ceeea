"""The integer engine's oneDNN int8 convolution (unet.integer.onednn) and its native kernels.

Every case is checked against the exact int64 convolution of the reference kernels, or the
engine's reference path; the engine-wide equality on every mode and adversarial input lives in
tests/model/test_integer_fast_path.py (the oneDNN convolution is the fast path's default).
"""

from __future__ import annotations

import pytest
import torch

import unet.integer.engine as engine_module
from quantizer import native
from unet.integer import IntegerUNet, onednn
from unet.integer.fast import requantize, requantize_accumulator, unit_pass
from unet.integer.kernels import conv3x3_codes, upsample2_codes
from unet.integer.onednn import ChannelBlocks, CodeBlock, OneDnnConv, first_step

from ..helpers.integer_cases import CL, VALIDATION, trained

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not onednn.available(), reason="oneDNN's int8 convolution is not available here")]


def exact_step(a: torch.Tensor, w: torch.Tensor, scale: float, bias: torch.Tensor) -> torch.Tensor:
    """``(acc s + b).float()`` of the exact int64 accumulators (B, O, H, W)."""
    acc = conv3x3_codes(a, w, "int64")
    return (acc.double() * scale + bias.double().view(1, -1, 1, 1)).float()


@pytest.mark.parametrize("low, high, w_max, channels", [
    (0, 255, 127, 5),          # unsigned bytes, direct weights
    (-128, 127, 127, 9),       # signed: one limb with zero point 128
    (-1, 255, 100, 3),         # a range of 257 values: two limbs
    (0, 127, 240, 6),          # pow2-like weights: the input given twice (halves)
    (-64, 63, 254, 4),         # halves, signed
    (0, 8192, 240, 8),         # pow2 codes: two 7-bit limbs
    (-2**17, 2**17, 254, 3),   # x16 upsampled codes: three limbs, signed top
    (-20, 40, 127, 96),        # channel counts where oneDNN picks its blocked (AMX / VNNI) kernels
])
def test_accumulators_are_exact(low, high, w_max, channels):
    g = torch.Generator().manual_seed(channels)
    a = torch.randint(low, high + 1, (2, channels, 7, 10), generator=g)
    a[0, 0, 0, 0], a[0, -1, -1, -1] = low, high  # the extremes, at a corner and in the border
    w = torch.randint(-w_max, w_max + 1, (5, channels, 3, 3), generator=g)
    w[0, 0, 0, 0], w[1, 0, 1, 1] = w_max, -w_max
    bias = torch.randn(5, generator=g)
    for scale in (2.0**-7, 0.3):
        conv = OneDnnConv(w, scale, bias)
        acc = conv(a.float().contiguous(memory_format=CL), low, high)
        assert acc is not None and conv.halves == (w_max > 127)
        got = first_step(acc, scale, conv.bias64)
        assert got is not None and got.is_contiguous(memory_format=CL)
        assert torch.equal(got, exact_step(a, w, scale, bias)), (low, high, w_max, scale)
        # the folded form (one limb, proven bound, power-of-two scale) rounds once, the same way
        assert acc.folded == (len(acc.parts) == 1 and scale == 2.0**-7
                              and max(-low, high) * conv.weight_sum < 2**24)


def test_limb_plans():
    direct = OneDnnConv(torch.full((1, 2, 3, 3), 127), 1.0, torch.zeros(1))
    halves = OneDnnConv(torch.full((1, 2, 3, 3), -240), 1.0, torch.zeros(1))
    assert not direct.halves and halves.halves
    assert [(limb.shift, limb.top, limb.zero_point) for limb in direct.plan(0, 255)] == [(0, True, 0)]
    assert [(limb.shift, limb.zero_point) for limb in direct.plan(-128, 127)] == [(0, 128)]
    assert [(limb.shift, limb.top, limb.zero_point) for limb in direct.plan(-1, 255)] == [(0, False, 0), (8, True, 1)]
    assert [(limb.shift, limb.zero_point) for limb in halves.plan(0, 255)] == [(0, 0)]
    assert [(limb.shift, limb.zero_point) for limb in halves.plan(-64, 63)] == [(0, 64)]
    assert [(limb.shift, limb.zero_point) for limb in halves.plan(-8192, 8192)] == [(0, 0), (8, 32)]
    assert halves.weight_sum == 2 * 9 * 240  # -240 = -120 - 120, each half against its copy of the input
    # a limb whose int32 sum could overflow is refused (the engine then takes the int8 GEMMs)
    wide = OneDnnConv(torch.full((1, 9000, 3, 3), 127), 1.0, torch.zeros(1))
    assert wide.plan(0, 255) is None
    assert wide.plan(-2, 2) is None  # small values, but the bytes (l + 2) sum before the zero point leaves
    assert OneDnnConv.accepts(torch.tensor([-256, 254]))
    assert not OneDnnConv.accepts(torch.tensor([255])) and not OneDnnConv.accepts(torch.tensor([-257]))
    with pytest.raises(ValueError, match="outside"):
        OneDnnConv(torch.full((1, 1, 3, 3), 300), 1.0, torch.zeros(1))


def test_channel_blocks_equal_their_joined_codes():
    g = torch.Generator().manual_seed(5)
    low_res = torch.randint(-8192, 8193, (2, 3, 4, 5), generator=g).float().contiguous(memory_format=CL)
    low_res[0, 0, 0, 0], low_res[1, 2, 3, 4] = -8192, 8192  # the extremes, at the edges the kernel repeats
    skip = torch.randint(-8192, 8193, (2, 2, 8, 10), generator=g).float().contiguous(memory_format=CL)
    blocks = ChannelBlocks((CodeBlock(low_res, upsampled=True), CodeBlock(skip, 16)))
    joined = blocks.joined()
    assert torch.equal(joined[:, :3], upsample2_codes(low_res)) and torch.equal(joined[:, 3:], skip * 16)
    assert blocks.shape == tuple(joined.shape)
    low, high = blocks.code_range()  # bounds: the upsampled block's from its input
    assert low <= int(joined.min()) and high >= int(joined.max()) and (low, high) == (-16 * 8192, 16 * 8192)
    for w_max in (127, 240):  # direct, and halves: the bytes are written twice
        w = torch.randint(-w_max, w_max + 1, (4, 5, 3, 3), generator=g)
        conv = OneDnnConv(w, 1.0, torch.zeros(4))
        from_blocks = first_step(conv(blocks, low, high), 1.0, conv.bias64)
        from_joined = first_step(conv(joined, low, high), 1.0, conv.bias64)
        assert torch.equal(from_blocks, from_joined)
        assert torch.equal(from_blocks, exact_step(joined.to(torch.int64), w, 1.0, torch.zeros(4)))
        with native.enabled(False):  # the PyTorch form of the bytes
            assert torch.equal(first_step(conv(blocks, low, high), 1.0, conv.bias64), from_blocks)


def test_input_bytes_of_wide_blocks_equal_their_pytorch_form():
    # more channels than the kernels form per pixel at once (1024), in both byte kernels
    g = torch.Generator().manual_seed(7)
    low_res = torch.randint(-3000, 3001, (1, 1100, 2, 3), generator=g).float().contiguous(memory_format=CL)
    skip = torch.randint(-3000, 3001, (1, 1030, 4, 6), generator=g).float().contiguous(memory_format=CL)
    blocks = ChannelBlocks((CodeBlock(low_res, upsampled=True), CodeBlock(skip, 16)))
    for w_max in (127, 240):  # direct, and halves (the bytes written twice)
        conv = OneDnnConv(torch.full((1, 2130, 3, 3), w_max), 1.0, torch.zeros(1))
        limbs = conv.plan(*blocks.code_range())
        assert len(limbs) == 3
        native_bytes = conv._bytes(blocks, limbs)
        with native.enabled(False):
            pytorch_bytes = conv._bytes(blocks, limbs)
        assert all(torch.equal(a, b) for a, b in zip(native_bytes, pytorch_bytes, strict=True)), w_max


def test_sums_past_float32_are_refused_not_rounded():
    # 300 channels of 255 x 127: 9.7 million per tap set, past 2^24 in one limb sum
    w = torch.full((2, 300, 3, 3), 127)
    a = torch.full((1, 300, 4, 4), 255.0).contiguous(memory_format=CL)
    conv = OneDnnConv(w, 1.0, torch.zeros(2))
    acc = conv(a, 0, 255)
    assert acc is not None and not acc.folded  # not proven below 2^24: checked by the consumer
    assert first_step(acc, 1.0, conv.bias64) is None
    with native.enabled(False):  # the PyTorch form checks too
        assert first_step(acc, 1.0, conv.bias64) is None


def test_engine_falls_back_where_sums_are_not_exact(monkeypatch):
    model = trained("FIXED", rounding="pow2")
    reference = IntegerUNet.from_model(model, fast=False).forward_codes(VALIDATION)
    monkeypatch.setattr(engine_module, "requantize_accumulator", lambda *args: None)  # every sum "too wide"
    engine = IntegerUNet.from_model(model)
    got = engine.forward_codes(VALIDATION)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert all(k.startswith("int8") for k in engine.kernels_used().values())


def test_engine_without_onednn_keeps_the_int8_gemms(monkeypatch):
    monkeypatch.setattr(onednn, "available", lambda: False)
    model = trained("FIXED", overflow="saturate")
    engine = IntegerUNet.from_model(model)
    got = engine.forward_codes(VALIDATION)
    reference = IntegerUNet.from_model(model, fast=False).forward_codes(VALIDATION)
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert all(k.startswith("int8") for k in engine.kernels_used().values())


@pytest.mark.parametrize("case", [dict(mode="FIXED", rounding="pow2"), dict(mode="FIXED", overflow="saturate"),
                                  dict(mode="FIXED", act=(3, 3), weight=(0, 4)), dict(mode="BNN")])
def test_pytorch_forms_of_the_kernels_give_the_same_codes(case):
    model = trained(**case)
    fast = IntegerUNet.from_model(model)
    expected = fast.forward_codes(VALIDATION * 3)
    with native.enabled(False):  # limb bytes, limb sums and the unit pass through PyTorch
        got = IntegerUNet.from_model(model).forward_codes(VALIDATION * 3)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_one_pass_requantization_equals_the_modules():
    model = trained("FIXED", rounding="pow2")
    engine = IntegerUNet.from_model(model)
    g = torch.Generator().manual_seed(2)
    for name, unit in engine.units.items():
        plan = unit_pass(unit.requant)
        assert plan is not None, name  # ReLU, BatchNorm and pow2 fold into one pass
        out_channels, in_channels = unit.weights.shape[:2]
        a = torch.randint(0, 8193, (1, in_channels, 6, 8), generator=g).float().contiguous(memory_format=CL)
        conv = OneDnnConv(unit.weights, unit.requant.acc_scale, unit.requant.bias)
        acc = conv(a, 0, 8192)
        fused = requantize_accumulator(unit.requant, acc, plan)
        y = first_step(acc, unit.requant.acc_scale, unit.requant.bias)
        modules = requantize(unit.requant, y.permute(0, 2, 3, 1), 0, folded=True)
        assert fused is not None and torch.equal(fused, modules), name
        assert torch.equal(requantize_accumulator(unit.requant, acc, None), modules), name
        with native.enabled(False):  # a plan made with the kernels, used after they were switched off
            assert torch.equal(requantize_accumulator(unit.requant, acc, plan), modules), name
