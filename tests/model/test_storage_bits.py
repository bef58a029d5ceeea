"""Honest storage widths: the codes a real encoding stores fit ``QuantSpec.storage_bits``.

For every quantization mode and several widths a tiny U-Net is trained for a few steps on
random data (so the weights have moved off their init), then every quantized weight (and every
quantized activation of a forward pass) is encoded with ``storage_codes``: each code must fit
the declared width sign-magnitude, and decoding must give the quantized tensor back exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizer import ActivationQuantizer, QuantSpec, fixed_point
from quantizer import functional as F
from unet.memory import weight_memory_bits
from unet.model import UNet, quant_specs

from ..helpers.models import random_batch, trained_unet

FIXED_WIDTHS = [(8, 0, 0, 8), (6, 0, 0, 4), (4, 0, 0, 2), (8, 8, 8, 8)]  # activations i.f / weights i.f
VARIANTS = [("nearest", "wrap"), ("nearest", "saturate"), ("pow2", "wrap")]
MODES = [
    pytest.param(("FIXED", *widths, rounding, overflow),
                 id="a{}.{}_w{}.{}".format(*widths) + f"-{rounding}-{overflow}")
    for widths in FIXED_WIDTHS
    for rounding, overflow in VARIANTS
] + [
    pytest.param(("INT", 8, 0, 8, 0, "nearest", "wrap"), id="int8"),
    pytest.param(("INT", 4, 0, 4, 0, "nearest", "wrap"), id="int4"),
    pytest.param(("BNN", 0, 0, 0, 0, "nearest", "wrap"), id="bnn"),
    pytest.param(("Ternary", 0, 0, 0, 0, "nearest", "wrap"), id="ternary"),
]


def fits(codes: torch.Tensor, spec: QuantSpec) -> bool:
    """Whether signed ``codes`` fit ``spec.storage_bits`` bits (sign-magnitude; binary: +-1)."""
    if spec.kind == "binary":
        return bool(((codes == 1) | (codes == -1)).all())
    return int(codes.abs().max()) <= 2 ** (spec.storage_bits - 1) - 1


def trained_model(mode: tuple) -> tuple[UNet, list[torch.Tensor], list[QuantSpec]]:
    """A base_channels 4 U-Net after 3 Adam steps on random 16x16 data, and the inputs and
    specs of its activation quantizers on one more batch."""
    quantization, ai, af, wi, wf, rounding, overflow = mode
    model = trained_unet(quant_specs(quantization, ai, af, wi, wf, rounding, overflow), random_batch, steps=3, lr=0.05,
                         seed=0)
    inputs: list[torch.Tensor] = []
    specs: list[QuantSpec] = []

    def keep(module, args, _output):
        inputs.append(args[0].detach().clone())
        specs.append(module.spec)

    hooks = []
    for module in model.modules():
        if isinstance(module, ActivationQuantizer) and module.spec.kind != "float":
            module.inplace = False
            hooks.append(module.register_forward_hook(keep))
    with torch.no_grad():
        model(torch.rand(2, 1, 16, 16))
    for hook in hooks:
        hook.remove()
    return model, inputs, specs


@pytest.mark.parametrize("mode", MODES)
def test_trained_codes_fit_the_declared_width(mode):
    model, act_inputs, act_specs = trained_model(mode)
    convs = list(model.quantized_convs())
    assert len(convs) == 12
    widest = 0
    for conv in convs:
        spec = conv.weight_quant
        codes, scale = spec.storage_codes(conv.weight)
        assert codes.dtype == torch.int64
        assert fits(codes, spec), (str(spec), spec.storage_bits, int(codes.abs().max()))
        assert torch.equal(spec.decode(codes, scale), conv.quantized_weight().detach())
        widest = max(widest, int(codes.abs().max()))
    spec = convs[0].weight_quant
    if spec.kind == "fixed" and spec.rounding == "nearest" and spec.overflow == "wrap" and spec.i_bits == 0:
        # the extra bit is needed: a fraction rounded up to a whole one somewhere (code 2^f)
        assert widest == 2 ** (spec.i_bits + spec.f_bits)
    for x, act_spec in zip(act_inputs, act_specs, strict=True):
        if act_spec.kind == "int":
            continue  # INT activations: integer values, checked by the weight case
        codes, scale = act_spec.storage_codes(x)
        assert fits(codes, act_spec), (str(act_spec), act_spec.storage_bits, int(codes.abs().max()))
        assert torch.equal(act_spec.decode(codes, scale), act_spec(x))


def test_weights_moved_off_their_init():
    """The fit test must see trained weights: 3 steps at lr 0.05 move U(-1, 1) weights outside [-1, 1]."""
    model, _, _ = trained_model(("FIXED", 6, 0, 0, 4, "nearest", "wrap"))
    assert any(float(c.weight.detach().abs().max()) > 1.0 for c in model.quantized_convs())


# --- the widths, by hand -------------------------------------------------------------------


def test_wrap_needs_one_more_bit_than_saturate():
    x = torch.tensor([0.99, -0.99, 0.5])
    wrap, saturate = QuantSpec("fixed", 0, 4), QuantSpec("fixed", 0, 4, overflow="saturate")
    assert wrap.storage_codes(x)[0].tolist() == [16, -16, 8]  # 33 levels: 16 needs 5 magnitude bits
    assert saturate.storage_codes(x)[0].tolist() == [15, -15, 8]
    assert (wrap.storage_bits, saturate.storage_bits) == (6, 5)


def test_int_range_is_inclusive():
    spec = QuantSpec("int", 4)
    codes, _ = spec.storage_codes(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    assert codes.tolist() == [-8, 0, 4, 8] and spec.storage_bits == 5 and fits(codes, spec)


def test_pow2_levels_and_flush_to_zero():
    # Q0.4: M = 0.9375 is not a power of two, so it is a level of its own
    assert F.pow2_levels(0, 4, -3) == [0.0, 0.125, 0.25, 0.5, 0.9375]
    # Q6.0: M = 32 is the top power
    assert F.pow2_levels(6, 0, 3) == [0.0, 8.0, 16.0, 32.0]
    # M below 2^e_min is still reached by clamping from above
    assert F.pow2_levels(0, 1, 0) == [0.0, 0.5]
    assert F.pow2_levels(0, 0, -8) == [0.0]
    spec = QuantSpec("fixed", 0, 4, rounding="pow2", pow2_min_exponent=-3)
    x = torch.tensor([0.1, 0.09, 0.088, -0.2, 5.0, 0.0])  # log2: -3.32 -> 2^-3; -3.47 -> 2^-3; -3.51 -> flushed
    q = spec(x)
    assert q.tolist() == [0.125, 0.125, 0.0, -0.25, 0.9375, 0.0]
    codes, scale = spec.storage_codes(x)
    assert codes.tolist() == [1, 1, 0, -2, 4, 0] and scale == 1.0 and spec.storage_bits == 4
    assert torch.equal(spec.decode(codes, scale), q)


def test_pow2_flush_happens_in_training_too():
    """The model trains with the flushed values (and the identity gradient), so an export
    of the stored levels equals what training simulated."""
    spec = QuantSpec("fixed", 6, 0, rounding="pow2", pow2_min_exponent=-8)
    x = torch.tensor([2.0**-9, 2.0**-8, 3.0], requires_grad=True)
    q = spec(x)
    assert q.tolist() == [0.0, 2.0**-8, 4.0]
    q.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]
    # without a bound (the functional default) the original rule keeps 2^-9
    assert fixed_point(x.detach(), 6, 0, "pow2").tolist() == [2.0**-9, 2.0**-8, 4.0]


def test_bnn_has_two_levels():
    spec = QuantSpec("binary")
    codes, _ = spec.storage_codes(torch.tensor([0.0, -0.0, -1e-30, 3.0]))
    assert codes.tolist() == [1, 1, -1, 1] and spec.storage_bits == 1


def test_ternary_is_two_bits_and_a_scale_per_channel():
    spec = QuantSpec("ternary")
    w = torch.randn(3, 2, 3, 3)
    codes, alpha = spec.storage_codes(w)
    assert set(codes.unique().tolist()) <= {-1, 0, 1} and spec.storage_bits == 2
    assert alpha.shape == (3, 1, 1, 1) and torch.equal(spec.decode(codes, alpha), spec(w))


def test_memory_counts_the_storage_widths():
    """unet.memory uses the one definition: Q0.4 wrap weights at 6 bits, pow2 at its level count."""
    for spec, bits in ((QuantSpec("fixed", 0, 4), 6), (QuantSpec("fixed", 0, 4, rounding="pow2"), 5)):
        model = UNet(4, spec, QuantSpec("fixed", 6, 0))
        quantized = sum(c.weight.numel() for c in model.quantized_convs())
        assert weight_memory_bits(model)["quantized"] == quantized * bits == quantized * spec.storage_bits


# --- every value, by property ----------------------------------------------------------------

SPECS = [
    QuantSpec("fixed", i, f, rounding, overflow, e)
    for i, f in ((0, 4), (6, 0), (3, 3), (0, 0), (8, 8))
    for rounding, overflow in (("nearest", "wrap"), ("nearest", "saturate"), ("pow2", "wrap"))
    for e in ((-8, -2) if rounding == "pow2" else (-8,))
] + [QuantSpec("int", 4), QuantSpec("int", 1), QuantSpec("binary")]

values = st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=2, max_size=30).map(
    lambda xs: torch.tensor(xs, dtype=torch.float32)
)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s}, e{s.pow2_min_exponent}" if s.is_pow2 else str(s))
@settings(max_examples=40, deadline=None)
@given(x=values)
def test_every_value_fits_and_decodes_back(spec, x):
    q = spec(x)
    codes, scale = spec.storage_codes(x)
    assert fits(codes, spec)
    assert torch.equal(spec.decode(codes, scale), q)
    # a reader rebuilds float weights that quantize to q again, exactly
    assert torch.equal(spec(spec.float_for(q)), q)
    if spec.is_pow2:
        assert len(spec.pow2_levels()) <= 2 ** (spec.storage_bits - 1)
        assert math.ceil(math.log2(len(spec.pow2_levels()))) == spec.storage_bits - 1 or len(spec.pow2_levels()) == 1
