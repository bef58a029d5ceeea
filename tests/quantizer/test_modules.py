"""QuantSpec, QuantConv2d and ActivationQuantizer (SPEC §3 quantizers used as layers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantizer import FLOAT, ActivationQuantizer, QuantConv2d, QuantSpec, fixed_point, ternary

SPECS = [
    QuantSpec("fixed", 0, 4),
    QuantSpec("fixed", 0, 2),
    QuantSpec("fixed", 2, 2, overflow="saturate"),
    QuantSpec("fixed", 0, 4, rounding="pow2"),
    QuantSpec("int", 4),
    QuantSpec("binary"),
    QuantSpec("ternary"),
    FLOAT,
]


def make_conv(spec: QuantSpec, seed: int = 0, **kwargs) -> QuantConv2d:
    torch.manual_seed(seed)
    return QuantConv2d(3, 4, 3, padding=1, weight_quant=spec, **kwargs)


# --- QuantSpec ------------------------------------------------------------------------------


def test_quantspec_dispatches_to_the_functional_quantizers():
    x = torch.linspace(-3, 3, 97)
    assert torch.equal(QuantSpec("fixed", 0, 2)(x), fixed_point(x, 0, 2))
    assert torch.equal(
        QuantSpec("fixed", 3, 3, overflow="saturate")(x),
        fixed_point(x, 3, 3, "nearest", "saturate"),
    )
    pow2 = QuantSpec("fixed", 4, 0, rounding="pow2", pow2_min_exponent=-3)
    assert torch.equal(pow2(x), fixed_point(x, 4, 0, "pow2", pow2_min_exponent=-3))
    assert not torch.equal(pow2(x), fixed_point(x, 4, 0, "pow2"))  # 2^-4 is flushed
    # binary: two levels, exact zeros give +1 (x holds 0.0)
    assert torch.equal(QuantSpec("binary")(x), torch.where(x < 0, -1.0, 1.0))
    w = x[:96].reshape(4, 24)
    assert torch.equal(QuantSpec("ternary")(w), ternary(w))
    assert QuantSpec("float")(x) is x


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "fixd"},
        {"kind": "FIXED"},
        {"kind": "fixed", "rounding": "stochastic"},
        {"kind": "fixed", "overflow": "clip"},
        {"kind": "fixed", "i_bits": -1, "f_bits": 2},
        {"kind": "fixed", "i_bits": 2, "f_bits": -1},
        {"kind": "int", "i_bits": -4},
    ],
)
def test_quantspec_rejects_invalid(kwargs):
    with pytest.raises(ValueError):
        QuantSpec(**kwargs)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (QuantSpec("fixed", 0, 4), 6),  # wrap: the fraction rounds up to code 16 (33 levels)
        (QuantSpec("fixed", 0, 4, overflow="saturate"), 5),
        (QuantSpec("fixed", 6, 0), 7),  # wrap with f = 0 truncates: no extra code
        (QuantSpec("fixed", 8, 8), 18),
        (QuantSpec("fixed", 8, 8, overflow="saturate"), 17),
        # levels 0, 2^-8 ... 2^-1, M = 0.75: 10 magnitudes, 4 bits, plus the sign
        (QuantSpec("fixed", 0, 2, rounding="pow2", pow2_min_exponent=-8), 5),
        # 0, 2^-6 ... 2^-1, 0.75: 8 magnitudes
        (QuantSpec("fixed", 0, 2, rounding="pow2", pow2_min_exponent=-6), 4),
        # Q6.0: M = 32 is a power of two: 0, 2^-9 ... 2^5 = 16 magnitudes
        (QuantSpec("fixed", 6, 0, rounding="pow2", pow2_min_exponent=-9), 5),
        (QuantSpec("fixed", 0, 0, rounding="pow2"), 1),  # M = 0: only zeros
        (QuantSpec("int", 4), 5),  # [-8, 8] has 17 levels
        (QuantSpec("binary"), 1),
        (QuantSpec("ternary"), 2),
        (QuantSpec("float"), 32),
        (FLOAT, 32),
    ],
    ids=str,
)
def test_storage_bits(spec, expected):
    assert spec.storage_bits == expected


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (QuantSpec("fixed", 0, 4), "Q0.4"),
        (QuantSpec("fixed", 6, 0), "Q6.0"),
        (QuantSpec("fixed", 0, 2, rounding="pow2"), "Q0.2, pow2"),
        (QuantSpec("fixed", 3, 3, overflow="saturate"), "Q3.3, saturate"),
        (QuantSpec("int", 4), "INT4"),
        (QuantSpec("binary"), "binary"),
        (QuantSpec("ternary"), "ternary"),
        (FLOAT, "float"),
    ],
)
def test_quantspec_str(spec, text):
    assert str(spec) == text


def test_quantspec_is_hashable_and_frozen():
    assert QuantSpec("fixed", 0, 4) == QuantSpec("fixed", 0, 4)
    assert len({QuantSpec("fixed", 0, 4), QuantSpec("fixed", 0, 4), FLOAT}) == 2
    with pytest.raises(AttributeError):
        QuantSpec("fixed", 0, 4).i_bits = 3  # type: ignore[misc]


# --- QuantConv2d ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_conv_forward_uses_quantized_weight(spec):
    conv = make_conv(spec)
    x = torch.randn(2, 3, 8, 8)
    qw = spec(conv.weight.detach())
    assert torch.equal(conv.quantized_weight().detach(), qw)
    expected = F.conv2d(x, qw, conv.bias.detach(), padding=1)
    assert torch.equal(conv(x).detach(), expected)


def test_conv_weight_is_actually_quantized():
    """A Q0.2 conv differs from the float conv with the same weights."""
    q = make_conv(QuantSpec("fixed", 0, 2))
    f = make_conv(FLOAT)
    assert torch.equal(q.weight, f.weight)
    x = torch.randn(1, 3, 8, 8)
    assert not torch.allclose(q(x), f(x))
    levels = set(q.quantized_weight().flatten().tolist())
    assert levels <= {0.0, 0.25, -0.25, 0.5, -0.5, 0.75, -0.75, 1.0, -1.0}


def test_conv_without_bias():
    conv = make_conv(QuantSpec("fixed", 0, 4), bias=False)
    x = torch.randn(1, 3, 5, 5)
    expected = F.conv2d(x, QuantSpec("fixed", 0, 4)(conv.weight.detach()), padding=1)
    assert torch.equal(conv(x).detach(), expected)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.kind != "binary"], ids=str)
def test_conv_gradient_reaches_float_weight_straight_through(spec):
    """With an identity STE, dL/dW equals dL/dW_q of a float conv run on the quantized weight."""
    conv = make_conv(spec)
    x = torch.randn(2, 3, 6, 6)
    g = torch.randn(2, 4, 6, 6)
    (conv(x) * g).sum().backward()

    qw = spec(conv.weight.detach()).requires_grad_(True)
    (F.conv2d(x, qw, conv.bias.detach(), padding=1) * g).sum().backward()

    assert conv.weight.grad is not None
    assert torch.allclose(conv.weight.grad, qw.grad, rtol=1e-5, atol=1e-6)
    assert conv.weight.grad.abs().sum() > 0
    assert conv.bias.grad is not None


def test_conv_binary_gradient_masked_outside_unit_interval():
    conv = make_conv(QuantSpec("binary"))
    with torch.no_grad():
        conv.weight[0].fill_(2.0)  # filter 0 is outside [-1, 1]: no gradient
    x = torch.randn(2, 3, 6, 6)
    (conv(x) ** 2).sum().backward()
    assert torch.equal(conv.weight.grad[0], torch.zeros_like(conv.weight.grad[0]))
    assert conv.weight.grad[1:].abs().sum() > 0


def test_conv_is_trainable():
    """One SGD step moves the float weight even when the quantized weight does not change."""
    conv = make_conv(QuantSpec("fixed", 0, 2))
    before = conv.weight.detach().clone()
    opt = torch.optim.SGD(conv.parameters(), lr=1e-3)
    conv(torch.randn(2, 3, 6, 6)).square().mean().backward()
    opt.step()
    assert not torch.equal(conv.weight.detach(), before)


def test_conv_repr_names_weight_format():
    text = repr(make_conv(QuantSpec("fixed", 0, 4)))
    assert "weight=Q0.4" in text
    assert "QuantConv2d(3, 4" in text
    assert "weight=float" in repr(make_conv(FLOAT))
    assert "weight=ternary" in repr(make_conv(QuantSpec("ternary")))


def test_conv_default_is_float_conv():
    torch.manual_seed(0)
    conv = QuantConv2d(3, 4, 3)
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 7, 7)
    assert torch.equal(conv(x), ref(x))
    assert isinstance(conv, nn.Conv2d)


def test_conv_state_dict_holds_only_the_float_weight():
    conv = make_conv(QuantSpec("fixed", 0, 4))
    assert set(conv.state_dict()) == {"weight", "bias"}


# --- ActivationQuantizer ------------------------------------------------------------------


def test_activation_quantizer_repr():
    assert "Q6.0" in repr(ActivationQuantizer(QuantSpec("fixed", 6, 0)))
    assert "float" in repr(ActivationQuantizer())


def test_activation_quantizer_forward_and_gradient():
    act = ActivationQuantizer(QuantSpec("fixed", 6, 0))
    x = torch.tensor([0.4, 1.7, 63.9, 100.0, -2.5], requires_grad=True)
    y = act(x)
    assert torch.equal(y.detach(), torch.tensor([0.0, 1.0, 63.0, 63.0, -2.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))


def test_activation_quantizer_float_is_identity():
    x = torch.randn(4, 3)
    assert ActivationQuantizer()(x) is x


def test_activation_quantizer_binary_gradient():
    act = ActivationQuantizer(QuantSpec("binary"))
    x = torch.tensor([-3.0, -1.0, 0.2, 1.0, 3.0], requires_grad=True)
    y = act(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_modules_inside_a_sequential():
    model = nn.Sequential(
        make_conv(QuantSpec("fixed", 0, 4)),
        nn.ReLU(),
        ActivationQuantizer(QuantSpec("fixed", 6, 0)),
    )
    out = model(torch.randn(1, 3, 8, 8))
    assert out.shape == (1, 4, 8, 8)
    assert torch.equal(out, out.floor())
    assert "weight=Q0.4" in repr(model) and "Q6.0" in repr(model)
