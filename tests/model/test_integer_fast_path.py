"""The integer engine's fast exact path (unet.integer.fast) against its reference path.

The reference path (int64 codes, float32/float64/limbs/int64 convolutions, threshold tables)
is itself checked against the fake-quant model in tests/model/test_integer_engine.py; here the fast path
(int8 limb GEMMs, direct requantization, float32 codes) must give the very same codes at every
unit and the very same probabilities, for every mode and width, on ordinary and adversarial
inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unet.integer import IntegerUNet
from unet.integer.fast import Int8Conv, limb_count, split_limbs
from unet.integer.kernels import conv3x3_codes, maxpool2_codes, upsample2_codes
from unet.integer.onednn import OneDnnConv

from ..helpers.integer_cases import CL, EXACT_CASES, VALIDATION, adversarial_inputs, trained

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CASES = {
    **EXACT_CASES,
    "Q8.8/Q8.8": dict(mode="FIXED", act=(8, 8), weight=(8, 8)),
    "Q8.8/Q8.8 saturate": dict(mode="FIXED", act=(8, 8), weight=(8, 8), overflow="saturate"),
    "Q3.3 wrap": dict(mode="FIXED", act=(3, 3), weight=(0, 4)),
    "pow2 Q6.0/Q0.4 saturate": dict(mode="FIXED", rounding="pow2", overflow="saturate"),
    "pow2 Q4.2/Q0.8": dict(mode="FIXED", act=(4, 2), weight=(0, 8), rounding="pow2"),
    "INT4": dict(mode="INT", act=(4, 0), weight=(4, 0)),
}


def assert_fast_equals_reference(model) -> IntegerUNet:
    fast = IntegerUNet.from_model(model)
    reference = IntegerUNet.from_model(model, fast=False)
    assert fast.fast and not reference.fast
    inputs = adversarial_inputs()
    # the reference's batch-driven tables (Q8.8) only ever widen and give the same codes at any
    # width: one call over every input's range builds them once instead of once per wider input
    reference.forward_codes(torch.cat(list(inputs.values())))
    for name, x in inputs.items():
        got, expected = fast.forward_codes(x), reference.forward_codes(x)
        assert got.keys() == expected.keys()
        for unit in expected:
            assert got[unit].dtype == torch.int64
            assert torch.equal(got[unit], expected[unit]), (name, unit)
        if name in ("validation", "x1000"):  # the head is float on equal codes: two inputs suffice
            assert torch.equal(fast(x), reference(x)), name
    return fast


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_codes_equal_the_reference(case):
    fast = assert_fast_equals_reference(trained(**CASES[case]))
    assert all(k.startswith(("onednn-u8x", "int8")) or k in ("float32", "float64", "limbs", "int64")
               for k in fast.kernels_used().values())


def test_negative_gamma_wrap_region():
    source = trained("FIXED", act=(3, 3), weight=(0, 4))
    model = type(source)(4, source.weight_quant, source.act_quant).to(memory_format=CL)
    model.load_state_dict(source.state_dict())
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight[::2] *= -5.0
            bn.weight[1::2] *= 5.0
    assert_fast_equals_reference(model.eval())


def test_fast_path_is_the_default_and_reports_its_kernels():
    engine = IntegerUNet.from_model(trained("FIXED"))
    engine(VALIDATION)
    kernels = set(engine.kernels_used().values())
    assert kernels == {"onednn-u8x1"}  # oneDNN's int8 convolution; codes (x16 too) fit one byte
    engine(VALIDATION * 1000)
    assert "onednn-u8x2" in set(engine.kernels_used().values())  # the decoder's x16 inputs: two limbs
    forced = IntegerUNet.from_model(trained("FIXED"), kernel="float64")
    assert not forced.fast
    forced(VALIDATION)
    assert set(forced.kernels_used().values()) == {"float64"}
    assert IntegerUNet.from_model(trained("Ternary")).fast is False


def test_int8_limb_conv_is_exact():
    g = torch.Generator().manual_seed(3)
    for max_a, max_w, channels in ((64, 16, 5), (1024, 16, 7), (8192, 240, 4), (2**20, 2**8, 3), (127, 127, 9)):
        a = torch.randint(-max_a, max_a + 1, (2, channels, 6, 10), generator=g)
        a[0, 0, 0, 0] = -max_a  # the extremes, where the top limb is widest
        a[0, 0, 0, 1] = max_a
        w = torch.randint(-max_w, max_w + 1, (3, channels, 3, 3), generator=g)
        conv = Int8Conv(w)
        got = conv(a.float().contiguous(memory_format=CL), max_a)
        expected = conv3x3_codes(a, w, "int64").permute(0, 2, 3, 1)
        assert torch.equal(got.to(torch.int64), expected), (max_a, max_w)
        assert conv.last_kernel.startswith("int8")
    # worst case: every input at the bound with the filter's signs
    w = torch.randint(-127, 128, (2, 64, 3, 3), generator=g)
    a = (torch.full((1, 64, 3, 3), 2**18) * w[1:2].sign()).to(torch.int64)
    got = Int8Conv(w)(a.float().contiguous(memory_format=CL), 2**18)
    assert int(got[0, 1, 1, 1]) == 2**18 * int(w[1].abs().sum())
    assert got.dtype == torch.float64  # past 2^31: limbs summed in float64, still exact


def test_limbs_and_float_code_ops():
    x = torch.arange(-2**14, 2**14, dtype=torch.int32)
    for count in (limb_count(2**14), 3):
        limbs = split_limbs(x, count)
        assert all(limb.dtype == torch.int8 for limb in limbs)
        assert torch.equal(sum(limb.to(torch.int64) << (7 * i) for i, limb in enumerate(limbs)), x.to(torch.int64))
    assert limb_count(127) == 1 and limb_count(128) == 2 and limb_count(2**14) == 3
    c = torch.randint(-2**19, 2**19, (2, 3, 6, 8))
    cf = c.float().contiguous(memory_format=CL)
    assert torch.equal(upsample2_codes(cf).to(torch.int64), upsample2_codes(c))
    assert torch.equal(maxpool2_codes(cf).to(torch.int64), maxpool2_codes(c))
    assert torch.equal(F.max_pool2d(cf, 2), maxpool2_codes(cf))


def test_batches_and_sizes():
    model = trained("FIXED", rounding="pow2")
    fast, reference = IntegerUNet.from_model(model), IntegerUNet.from_model(model, fast=False)
    x = torch.rand(3, 1, 40, 24, generator=torch.Generator().manual_seed(1)).contiguous(memory_format=CL)
    assert torch.equal(fast(x), reference(x))
    assert torch.equal(fast(x[:1]), reference(x[:1]))


def test_large_batches_are_chunked_exactly(monkeypatch):
    import unet.integer.fast as fast

    monkeypatch.setattr(fast, "ROWS_PER_CHUNK", 40)  # several chunks per image, per image of a batch
    g = torch.Generator().manual_seed(9)
    for max_a in (100, 5000):
        a = torch.randint(-max_a, max_a + 1, (3, 4, 16, 8), generator=g)
        w = torch.randint(-200, 201, (5, 4, 3, 3), generator=g)
        got = Int8Conv(w)(a.float().contiguous(memory_format=CL), max_a)
        assert torch.equal(got.to(torch.int64), conv3x3_codes(a, w, "int64").permute(0, 2, 3, 1))


def test_units_whose_weights_fail_the_int32_proof_use_the_reference_kernels(monkeypatch):
    monkeypatch.setattr(Int8Conv, "accepts", staticmethod(lambda weights: False))
    monkeypatch.setattr(OneDnnConv, "accepts", staticmethod(lambda weights: False))
    model = trained("FIXED", rounding="pow2")
    fast, reference = IntegerUNet.from_model(model), IntegerUNet.from_model(model, fast=False)
    for x in (VALIDATION, VALIDATION * 1000):
        got, expected = fast.forward_codes(x), reference.forward_codes(x)
        assert all(torch.equal(got[k], expected[k]) for k in expected)
        assert torch.equal(fast(x), reference(x))
    assert fast.fast and set(fast.kernels_used().values()) <= {"float32", "float64", "limbs", "int64"}
