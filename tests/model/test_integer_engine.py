"""The integer engine (unet.integer) against the fake-quant model, layer by layer.

Each model is a tiny U-Net (base_channels 4) trained for a few Adam steps on synthetic blobs,
so that weights and BatchNorm statistics are away from their initial values, then put in
eval mode and laid out channels_last as the project builds it. Binary layers: the test data
never puts an exact 0 into sign(), so the checks hold for sign(0) = 0 and sign(0) = +1 alike.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unet.errors import UserError
from unet.integer import IntegerUNet, code_format, code_mismatches
from unet.integer.compare import reference_codes, unit_mismatches
from unet.integer.kernels import conv3x3_codes, conv_bound, maxpool2_codes, upsample2_codes, weight_limbs
from unet.model import UNet

from ..helpers.integer_cases import CL, EXACT_CASES, VALIDATION, trained

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def assert_same_outputs(model: UNet, engine: IntegerUNet, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(x)
    got = engine(x)
    for threshold in (0.5, 0.999):
        assert torch.equal(got > threshold, expected > threshold), threshold
    assert torch.equal(got, expected)  # the head sees the very same float32 input


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_codes_bit_exact_at_every_layer(case):
    model = trained(**EXACT_CASES[case])
    engine = IntegerUNet.from_model(model)
    mismatches = code_mismatches(model, engine, VALIDATION)
    assert len(mismatches) == 14
    assert mismatches == dict.fromkeys(mismatches, 0)
    assert_same_outputs(model, engine, VALIDATION)


@pytest.mark.parametrize("overflow", ["wrap", "saturate"])
def test_q8_8_differs_only_where_the_float_model_rounds(overflow):
    """Q8.8/Q8.8: decoder partial sums pass 2^24, where the float32 model rounds its own
    convolution; codes may then differ at rounding ties, and only there."""
    model = trained("FIXED", act=(8, 8), weight=(8, 8), overflow=overflow)
    engine = IntegerUNet.from_model(model)
    report = unit_mismatches(model, engine, VALIDATION)
    assert all(r["unexplained"] == 0 for r in report.values()), report
    for name, r in report.items():
        if r["inexact"] == 0:
            assert r["mismatches"] == 0, name
    assert any(r["inexact"] for r in report.values())  # the case is really exercised
    assert sum(r["mismatches"] for r in report.values()) <= 10
    with torch.no_grad():
        expected = model(VALIDATION)
    got = engine(VALIDATION)
    for threshold in (0.5, 0.999):
        assert torch.equal(got > threshold, expected > threshold)


def test_negative_gamma_and_the_wrap_region():
    """Q3.3 wrap with BatchNorm gains scaled by -5 on half the channels: the quantizer's input
    passes 2^3 (where the wrapped fraction is not monotone) and the thresholds flip."""
    source = trained("FIXED", act=(3, 3), weight=(0, 4))  # cached: change a copy
    model = UNet(4, source.weight_quant, source.act_quant).to(memory_format=CL)
    model.load_state_dict(source.state_dict())
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight[::2] *= -5.0
            bn.weight[1::2] *= 5.0
    model.eval()
    outside = []
    hooks = [bn.register_forward_hook(lambda m, i, o: outside.append(int((o.abs() > 8).sum()))) for bn in bns]
    engine = IntegerUNet.from_model(model)
    mismatches = code_mismatches(model, engine, VALIDATION)
    for h in hooks:
        h.remove()
    assert sum(outside) > 100
    assert mismatches == dict.fromkeys(mismatches, 0)
    assert_same_outputs(model, engine, VALIDATION)


def test_kernels_agree_and_float32_is_only_used_when_proven():
    model = trained("FIXED", act=(4, 0), weight=(0, 2))
    engine = IntegerUNet.from_model(model, fast=False)  # the reference kernels
    auto = engine.forward_codes(VALIDATION)
    assert set(engine.kernels_used().values()) == {"float32"}
    assert all(u.static_bound < 2**24 for u in engine.units.values())
    for kernel in ("int64", "limbs", "float64", "float32"):
        forced = IntegerUNet.from_model(model, kernel=kernel)
        codes = forced.forward_codes(VALIDATION)
        assert set(forced.kernels_used().values()) == {kernel}
        assert all(torch.equal(codes[k], auto[k]) for k in auto)
    wide = IntegerUNet.from_model(trained("FIXED", act=(8, 8), weight=(8, 8)), kernel="float32")
    with pytest.raises(ValueError, match="not exact"):
        wide(VALIDATION)


def test_integer_conv_is_exact_and_its_bound_is_tight():
    g = torch.Generator().manual_seed(5)
    a = torch.randint(-300, 301, (2, 5, 8, 8), generator=g)
    w = torch.randint(-40, 41, (3, 5, 3, 3), generator=g)
    expected = F.conv2d(a.double(), w.double(), padding=1).to(torch.int64)  # < 2^53: exact
    assert torch.equal(conv3x3_codes(a, w, "int64"), expected)
    assert torch.equal(conv3x3_codes(a, w, "float32"), expected)
    # weights too wide for one float64 convolution: split into limbs, still exact
    a_big = torch.randint(-2**40, 2**40, (1, 4, 6, 6), generator=g)
    w_big = torch.randint(-2**20, 2**20, (2, 4, 3, 3), generator=g)
    assert conv_bound(2**40, w_big) >= 2**53
    assert len(weight_limbs(w_big, 2**40)) > 1
    assert torch.equal(conv3x3_codes(a_big, w_big, "limbs"), conv3x3_codes(a_big, w_big, "int64"))
    # all inputs at the bound and the filter's signs: the centre sum reaches max|a| sum|w|
    worst = (torch.full((1, 5, 3, 3), 300) * w[1:2].sign()).to(torch.int64)
    assert int(conv3x3_codes(worst, w, "int64")[0, 1, 1, 1]) == conv_bound(300, w[1:2])
    big = torch.full((1, 1, 3, 3), 2**40, dtype=torch.int64)
    assert int(conv3x3_codes(big, torch.ones(1, 1, 3, 3, dtype=torch.int64), "int64")[0, 0, 1, 1]) == 9 * 2**40


def test_upsampling_and_pooling_of_codes_match_the_float_ops():
    c = torch.randint(-2**12, 2**12, (2, 3, 5, 7))
    up = upsample2_codes(c)
    expected = F.interpolate(c.float(), scale_factor=2, mode="bilinear", align_corners=False) * 16
    assert torch.equal(up, expected.to(torch.int64))
    assert torch.equal(expected, expected.round())  # the float result is exact here
    assert torch.equal(maxpool2_codes(c[:, :, :4, :6]), F.max_pool2d(c[:, :, :4, :6].float(), 2).to(torch.int64))


def test_batch_driven_tables_grow_and_stay_exact():
    """Q8.8 tables cover only the accumulator range seen so far: a later batch with larger
    activations widens them, and the codes still equal the model's."""
    model = trained("FIXED", act=(8, 8), weight=(8, 8))
    engine = IntegerUNet.from_model(model, fast=False)  # the fast path has no tables
    unit = engine.units["enc2.0"]
    assert not unit.requant.static
    small = VALIDATION * 0.25
    engine(small)
    before = unit.requant.table[1].clone()
    ref = reference_codes(model, VALIDATION)
    got = engine.forward_codes(VALIDATION)
    assert bool((unit.requant.table[1] >= before).all()) and bool((unit.requant.table[1] > before).any())
    assert torch.equal(got["enc2.0"], ref["enc2.0"])


def test_int_range_is_per_batch_like_the_model():
    model = trained("INT", act=(8, 0), weight=(8, 0))
    engine = IntegerUNet.from_model(model)
    one = VALIDATION[:1]
    assert code_mismatches(model, engine, one) == dict.fromkeys(reference_codes(model, one), 0)
    report = unit_mismatches(model, engine, VALIDATION)
    assert all(r["range_differs"] is False and r["mismatches"] == 0 for r in report.values())
    # the min-max range depends on the batch: the first image's codes change with company
    alone = engine.forward_codes(one)["enc2.0"]
    together = engine.forward_codes(VALIDATION)["enc2.0"][:1]
    assert not torch.equal(alone, together)


def test_ternary_keeps_float_activations():
    model = trained("Ternary")
    engine = IntegerUNet.from_model(model)
    with torch.no_grad():
        expected = model(VALIDATION)
    got = engine(VALIDATION)
    assert engine.forward_codes(VALIDATION) == {}
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert torch.equal(got > 0.5, expected > 0.5)


def test_code_formats():
    from quantizer import QuantSpec

    assert code_format(QuantSpec("fixed", 6, 0)).max_code == 64
    assert code_format(QuantSpec("fixed", 6, 0, overflow="saturate")).max_code == 63
    pow2 = code_format(QuantSpec("fixed", 0, 4, rounding="pow2", pow2_min_exponent=-24))
    assert pow2.scale == 2.0**-24 and pow2.max_code == 15 * 2**20  # M = 0.9375
    bounded = code_format(QuantSpec("fixed", 0, 4, rounding="pow2"))  # the default bound 2^-8
    assert bounded.scale == 2.0**-8 and bounded.max_code == 240
    assert int(pow2.levels[len(pow2.levels) // 2]) == 0 and torch.equal(pow2.levels, -pow2.levels.flip(0))
    assert code_format(QuantSpec("int", 8)).max_code == 128
    with pytest.raises(ValueError):
        code_format(QuantSpec("ternary"))


def test_bad_models_and_inputs_are_refused():
    with pytest.raises(UserError, match="Normal"):
        IntegerUNet.from_model(UNet(4))
    engine = IntegerUNet.from_model(trained("FIXED"))
    with pytest.raises(ValueError, match="divisible by 8"):
        engine(torch.zeros(1, 1, 20, 24))
    with pytest.raises(ValueError, match="kernel"):
        IntegerUNet.from_model(trained("FIXED"), kernel="int32")
