"""The fast quantizer forward rules equal the literal SPEC §3 formulas, value for value, in
place or not, and the U-Net's in-place activation quantizers give the gradients of the
out-of-place ones (the rewrites of the training-speed work, benchmarks/bench_training.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from quantizer import binary, fixed_point, int_minmax
from quantizer import functional as F
from quantizer import reference as R
from unet.model import UNet, quant_specs

from ..helpers.equality import equal_values

# --- the SPEC §3 formulas, written literally (the code before the speed rewrite) ---------------
# Torch forms of the rules of quantizer.reference, for every dtype; checked against it below.


def ref_wrap(x, i, f):
    a = x.abs()
    whole = a.floor()
    q = whole.clamp_max(2.0**i - 1)
    if f > 0:
        q = q + torch.round((a - whole) * 2.0**f) / 2.0**f
    return q * x.sign()


def ref_saturate(x, i, f):
    return (torch.round(x.abs() * 2.0**f) / 2.0**f).clamp_max(2.0**i - 2.0**-f) * x.sign()


def ref_pow2(x, i, f):
    return torch.exp2(torch.round(torch.log2(x.abs()))).clamp_max(F.pow2_limit(i, f)) * x.sign()


def ref_int(x, b):
    lo, hi = x.min(), x.max()
    if hi - lo <= 0:
        return torch.zeros_like(x)
    return torch.floor((x - lo) / (hi - lo) * 2.0**b) - 2.0 ** (b - 1)


def probe(dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(3000, generator=g) * s for s in (1e-3, 0.3, 1.0, 3.0, 40.0, 300.0, 1e6)]
    special = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 0.5, -0.5, 1.5, -2.5, 2.5, 1.0, -1.0,
               2.0**-126, -(2.0**-149), 3.0e38, -3.0e38, 0.70710677, 0.7071068, 1.4142135, 1.4142137]
    grid = torch.arange(-2000, 2000) / 64.0  # halves, quarters, ...: the rounding ties
    return torch.cat([*parts, torch.tensor(special), grid]).to(dtype)


def in_range(bound: float) -> torch.Tensor:
    """Values strictly inside (-bound, bound), ties included (the wrap fast path)."""
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4000, generator=g) * 2 - 1) * bound * 0.999
    return torch.cat([x, torch.arange(-64 * int(bound) + 1, 64 * int(bound)) / 64.0])


FORMATS = [(i, f) for i in (0, 1, 3, 6, 8) for f in (0, 1, 2, 4, 8)]


@pytest.mark.parametrize(("i", "f"), [(0, 2), (3, 3), (6, 0), (8, 8), (0, 0)])
def test_the_torch_formulas_here_are_the_reference_rules(i, f):
    """The float32 probe (specials, ties, every scale) through ref_* and through the plain-Python
    rules of quantizer.reference: the same values (pow2 away from its ties 2^(k + 1/2))."""
    x = probe()
    for ref, rule in ((ref_wrap, R.fixed_point_nearest_wrap), (ref_saturate, R.fixed_point_nearest_saturate),
                      (ref_pow2, R.fixed_point_pow2)):
        values = x.tolist()
        if rule is R.fixed_point_pow2:
            values = [v for v in values if not R.pow2_near_tie(v)]
        expected = torch.tensor([rule(v, i, f) for v in values], dtype=torch.float32)
        assert equal_values(ref(torch.tensor(values, dtype=torch.float32), i, f), expected), rule.__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize(("i", "f"), FORMATS)
def test_fixed_rules_equal_the_literal_formulas(dtype, i, f):
    x = probe(dtype)
    for rule, ref in ((F.fixed_point_nearest_wrap, ref_wrap), (F.fixed_point_nearest_saturate, ref_saturate),
                      (F.fixed_point_pow2, ref_pow2)):
        expected = ref(x, i, f)
        assert equal_values(rule(x, i, f), expected), rule.__name__
        y = x.clone()
        out = rule(y, i, f, inplace=True)
        assert out.data_ptr() == y.data_ptr() and equal_values(out, expected), rule.__name__


@pytest.mark.parametrize(("i", "f"), [(i, f) for i in (0, 1, 3, 8) for f in (1, 2, 4, 8)])
def test_wrap_fast_path_inside_the_integer_range(i, f):
    """Without any clamped integer part the rule is computed as round(x 2^f) / 2^f."""
    x = in_range(2.0**i)
    assert F._inside_integer_range(x, 2.0**i, i + f)
    assert equal_values(F.fixed_point_nearest_wrap(x, i, f), ref_wrap(x, i, f))
    assert equal_values(F.fixed_point_nearest_wrap(x.clone(), i, f, inplace=True), ref_wrap(x, i, f))


def test_wrap_fast_path_is_not_taken_outside_the_range_or_with_nan():
    assert not F._inside_integer_range(torch.tensor([0.5, 256.0]), 256.0, 16)
    assert not F._inside_integer_range(torch.tensor([0.5, float("nan")]), 256.0, 16)
    assert not F._inside_integer_range(torch.tensor([0.5], dtype=torch.float16), 256.0, 16)  # 2^16 overflows
    assert not F._inside_integer_range(torch.tensor([]), 256.0, 16)
    assert F.fixed_point_nearest_wrap(torch.tensor([]), 8, 8).numel() == 0


@pytest.mark.parametrize("bits", [1, 4, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int_equals_the_literal_formula(bits, dtype):
    x = probe(dtype)
    x = x[torch.isfinite(x) & (x.abs() < 1e30)]
    assert equal_values(F.int_minmax_forward(x, bits), ref_int(x, bits))
    assert equal_values(F.int_minmax_forward(x.clone(), bits, inplace=True), ref_int(x, bits))
    assert equal_values(F.int_minmax_forward(torch.full((3,), 2.5), bits, inplace=True), torch.zeros(3))


def test_inplace_keeps_channels_last_layout():
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    for q in (lambda t: fixed_point(t, 6, 0, inplace=True), lambda t: fixed_point(t, 0, 4, "pow2", inplace=True),
              lambda t: int_minmax(t, 8, inplace=True), lambda t: binary(t, inplace=True)):
        y = q(x.clone())
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("quant", [lambda t, ip: fixed_point(t, 6, 0, inplace=ip),
                                   lambda t, ip: fixed_point(t, 8, 8, inplace=ip),
                                   lambda t, ip: fixed_point(t, 0, 4, "pow2", inplace=ip),
                                   lambda t, ip: int_minmax(t, 8, inplace=ip),
                                   lambda t, ip: binary(t, inplace=ip)],
                         ids=["wrap6.0", "wrap8.8", "pow2", "int8", "binary"])
def test_inplace_forward_and_gradient_equal_out_of_place(quant):
    leaf = (torch.randn(3, 4, 5, 5) * 2).requires_grad_(True)
    grad = torch.randn(3, 4, 5, 5)
    out_of_place = quant(leaf * 1.0, False)
    (g1,) = torch.autograd.grad(out_of_place, leaf, grad)
    mid = leaf * 1.0
    in_place = quant(mid, True)
    assert in_place is mid
    (g2,) = torch.autograd.grad(in_place, leaf, grad)
    assert torch.equal(in_place, out_of_place) and torch.equal(g1, g2)


def test_inplace_on_a_leaf_that_requires_grad_is_refused():
    with pytest.raises(RuntimeError):
        fixed_point(torch.randn(4, requires_grad=True), 6, 0, inplace=True)


@pytest.mark.parametrize(("mode", "activation", "dropout"),
                         [("FIXED", "relu", 0.0), ("FIXED", "tanh", 0.3), ("INT", "ternarytanh", 0.0),
                          ("BNN", "relu", 0.3)])
def test_unet_in_place_quantizers_match_out_of_place(mode, activation, dropout):
    """The U-Net's activation quantizers work in place; outputs and gradients are those of
    the same model with out-of-place quantizers (train and eval mode)."""
    w, a = quant_specs(mode, 6, 0, 0, 4)
    torch.manual_seed(0)
    model = UNet(4, w, a, activation=activation, dropout=dropout)
    x = torch.randn(2, 1, 16, 16)
    state = copy.deepcopy(model.state_dict())  # the BatchNorm running statistics
    results = []
    for inplace in (True, False):
        model.load_state_dict(state)
        for m in model.modules():
            if hasattr(m, "inplace") and hasattr(m, "spec"):
                m.inplace = inplace
        model.zero_grad()
        torch.manual_seed(1)
        model.train()
        y = model(x)
        y.mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.eval()
        with torch.no_grad():
            y_eval = model(x)
        results.append((y.detach(), grads, y_eval))
    (y1, g1, e1), (y2, g2, e2) = results
    assert torch.equal(y1, y2) and torch.equal(e1, e2)
    assert all(torch.equal(p, q) for p, q in zip(g1, g2, strict=True))
