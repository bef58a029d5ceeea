"""Property tests (hypothesis) of the SPEC §3 quantizers: equality with the literal rules of
:mod:`quantizer.reference` on any input, grids, ranges, symmetry, monotonicity, idempotence,
finiteness, integer codes and the straight-through gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quantizer import QuantSpec, binary, fixed_point, int_minmax, ternary
from quantizer import functional as Fn
from quantizer import reference as R
from quantizer.functional import pow2_limit, ternary_threshold_and_scale

# per-test settings (not a global profile, so other test files keep theirs)
FAST = settings(max_examples=40, deadline=None)

MAX = 1e6  # moderate magnitudes; extreme ones have their own tests

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
moderate = st.floats(-MAX, MAX, allow_nan=False, width=32)
bits = st.integers(0, 8)
# INT needs a finite, not-too-small max - min (the overflow cases have their own failing tests
# in test_quantizer_values.py): magnitudes 0 or in [2^-90, 2^120]
int_elements = st.one_of(
    st.just(0.0),
    st.floats(2.0**-90, 2.0**120, width=32),
    st.floats(-(2.0**120), -(2.0**-90), width=32),
)


def tensors(elements=moderate, min_size=1, max_size=24):
    return st.lists(elements, min_size=min_size, max_size=max_size).map(
        lambda xs: torch.tensor(xs, dtype=torch.float32)
    )


def on_grid(q: torch.Tensor, f: int) -> bool:
    scaled = q * 2.0**f  # exact: multiplication by a power of two
    return bool((scaled == scaled.round()).all())


def is_power_of_two(v: float) -> bool:
    mantissa, _ = math.frexp(v)
    return mantissa == 0.5


# --- the code equals the literal rules (quantizer.reference) --------------------------------


def assert_equals_reference(q: torch.Tensor, expected: list[float], x: torch.Tensor) -> None:
    """``q`` (float32) equals the reference's values element by element (0.0 == -0.0; NaN
    matching NaN)."""
    got = q.tolist()
    assert q.dtype == torch.float32 and len(got) == len(expected)
    for g, e, v in zip(got, expected, x.tolist(), strict=True):
        assert g == e or (math.isnan(g) and math.isnan(e)), (v, g, e)


@FAST
@given(tensors(finite), bits, bits)
def test_wrap_equals_the_reference(x, i, f):
    expected = [R.fixed_point_nearest_wrap(v, i, f) for v in x.tolist()]
    assert_equals_reference(fixed_point(x, i, f, "nearest", "wrap"), expected, x)


@FAST
@given(tensors(finite), bits, bits)
def test_saturate_equals_the_reference(x, i, f):
    expected = [R.fixed_point_nearest_saturate(v, i, f) for v in x.tolist()]
    assert_equals_reference(fixed_point(x, i, f, "nearest", "saturate"), expected, x)


@FAST
@given(tensors(finite), bits, bits, st.sampled_from([None, -8, -2, 0]))
def test_pow2_equals_the_reference(x, i, f, min_exponent):
    """Away from the ties 2^(k + 1/2), where float32 ``log2`` may round the exponent otherwise."""
    x = x[torch.tensor([not R.pow2_near_tie(v) for v in x.tolist()], dtype=torch.bool)]
    expected = [R.fixed_point_pow2(v, i, f, min_exponent) for v in x.tolist()]
    assert_equals_reference(fixed_point(x, i, f, "pow2", pow2_min_exponent=min_exponent), expected, x)


@FAST
@given(tensors(st.integers(-1000, 1000).map(float)), st.integers(1, 8))
def test_int_equals_the_reference(x, b):
    """On integer values of moderate span, where float32 division cannot cross an integer."""
    assert_equals_reference(int_minmax(x, b), R.int_minmax(x.tolist(), b), x)


@FAST
@given(tensors(finite))
def test_binary_equals_the_reference(x):
    assert_equals_reference(binary(x), [R.binary(v) for v in x.tolist()], x)


# --- nearest / saturate -----------------------------------------------------------------------


@FAST
@given(tensors(finite), bits, bits)
def test_saturate_grid_and_range(x, i, f):
    q = fixed_point(x, i, f, "nearest", "saturate")
    assert on_grid(q, f)
    assert bool((q.abs() <= 2.0**i - 2.0**-f).all())


@FAST
@given(tensors(finite, min_size=2), bits, bits)
def test_saturate_monotone(x, i, f):
    xs, _ = x.sort()
    q = fixed_point(xs, i, f, "nearest", "saturate")
    assert bool((q[1:] >= q[:-1]).all())


@FAST
@given(tensors(finite), bits, bits)
def test_saturate_odd(x, i, f):
    assert torch.equal(
        fixed_point(-x, i, f, "nearest", "saturate"), -fixed_point(x, i, f, "nearest", "saturate")
    )


@FAST
@given(tensors(finite), bits, bits)
def test_saturate_idempotent(x, i, f):
    q = fixed_point(x, i, f, "nearest", "saturate")
    assert torch.equal(fixed_point(q, i, f, "nearest", "saturate"), q)


@FAST
@given(tensors(moderate), bits, bits)
def test_saturate_is_nearest_grid_point_inside_range(x, i, f):
    """Inside the range, the error is at most half a step."""
    q = fixed_point(x, i, f, "nearest", "saturate")
    inside = x.abs() <= 2.0**i - 2.0**-f
    err = (q - x).abs()[inside].double()
    assert bool((err <= 2.0 ** (-f - 1) * (1 + 1e-6)).all())


# --- nearest / wrap ---------------------------------------------------------------------------


@FAST
@given(tensors(finite), bits, bits)
def test_wrap_grid_and_range(x, i, f):
    q = fixed_point(x, i, f, "nearest", "wrap")
    assert on_grid(q, f)
    assert bool((q.abs() <= 2.0**i).all())


@FAST
@given(tensors(finite), bits, bits)
def test_wrap_odd(x, i, f):
    assert torch.equal(fixed_point(-x, i, f), -fixed_point(x, i, f))


@FAST
@given(tensors(moderate), bits, st.integers(1, 8))
def test_wrap_equals_saturate_below_the_integer_clamp(x, i, f):
    """For f >= 1 and |x| < 2^i - 1 the split formula is plain rounding to the 2^-f grid
    (floor(a) 2^f is even, so half-to-even ties agree)."""
    keep = x.abs() < 2.0**i - 1
    wrap = fixed_point(x, i, f, "nearest", "wrap")
    sat = fixed_point(x, i, f, "nearest", "saturate")
    assert torch.equal(wrap[keep], sat[keep])


@FAST
@given(tensors(moderate), st.integers(1, 8))
def test_wrap_f0_is_truncation(x, i):
    q = fixed_point(x, i, 0, "nearest", "wrap")
    assert torch.equal(q, x.trunc().clamp(-(2.0**i - 1), 2.0**i - 1))


# --- pow2 -------------------------------------------------------------------------------------


@FAST
@given(tensors(finite), bits, bits)
def test_pow2_values_range_and_sign(x, i, f):
    m = pow2_limit(i, f)
    q = fixed_point(x, i, f, "pow2")
    assert bool((q.abs() <= m).all())
    for qv, xv in zip(q.tolist(), x.tolist(), strict=True):
        if qv != 0:
            assert is_power_of_two(abs(qv)) or abs(qv) == m, (xv, qv)
            assert math.copysign(1.0, qv) == math.copysign(1.0, xv)
        else:
            assert xv == 0 or m == 0, (xv, qv)


@FAST
@given(tensors(moderate), bits, bits)
def test_pow2_odd(x, i, f):
    assert torch.equal(fixed_point(-x, i, f, "pow2"), -fixed_point(x, i, f, "pow2"))


# --- INT, binary, ternary ---------------------------------------------------------------------


@FAST
@given(tensors(int_elements), st.integers(1, 8))
def test_int_integers_in_range(x, b):
    q = int_minmax(x, b)
    assert bool((q == q.round()).all())
    assert bool((q >= -(2 ** (b - 1))).all()) and bool((q <= 2 ** (b - 1)).all())


@FAST
@given(tensors(int_elements, min_size=2), st.integers(1, 8))
def test_int_min_maps_to_lowest_code(x, b):
    q = int_minmax(x, b)
    if x.max() > x.min():
        assert q[x.argmin()].item() == -(2 ** (b - 1))


@FAST
@given(tensors(finite))
def test_binary_values(x):
    q = binary(x)
    assert set(q.tolist()) <= {-1.0, 1.0}
    assert torch.equal(q == 1, x >= 0)


weights = st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)).flatmap(
    lambda shape: st.lists(moderate, min_size=math.prod(shape), max_size=math.prod(shape)).map(
        lambda xs: torch.tensor(xs, dtype=torch.float32).reshape(shape[0], shape[1], 1, shape[2])
    )
)


@FAST
@given(weights)
def test_ternary_at_most_three_values_per_channel(w):
    q = ternary(w)
    _, alpha = ternary_threshold_and_scale(w)
    for c in range(w.shape[0]):
        a = alpha[c].item()
        assert set(q[c].flatten().tolist()) <= {-a, 0.0, a}
        # sign is kept where the entry survives
        nz = q[c] != 0
        assert torch.equal(q[c][nz].sign(), w[c][nz].sign())


@FAST
@given(weights)
def test_ternary_equals_the_reference(w):
    """Except for entries within a float32 rounding of the threshold (the code compares with
    ``delta_c`` rounded to float32)."""
    q = ternary(w).flatten(1)
    delta, _ = ternary_threshold_and_scale(w)
    expected = R.ternary(w.flatten(1).tolist())
    for c, row in enumerate(w.flatten(1).tolist()):
        d = delta[c].item()
        for k, v in enumerate(row):
            if abs(abs(v) - d) > 1e-6 * d:
                assert q[c, k].item() == torch.tensor(expected[c][k]).item(), (row, k)


# --- no NaN / inf for any finite input -------------------------------------------------------

QUANTIZERS = {
    "wrap": lambda x: fixed_point(x, 3, 3),
    "wrap-i0": lambda x: fixed_point(x, 0, 2),
    "wrap-f8": lambda x: fixed_point(x, 8, 8),
    "saturate": lambda x: fixed_point(x, 3, 3, "nearest", "saturate"),
    "saturate-0-0": lambda x: fixed_point(x, 0, 0, "nearest", "saturate"),
    "pow2": lambda x: fixed_point(x, 6, 0, "pow2"),
    "pow2-0-4": lambda x: fixed_point(x, 0, 4, "pow2"),
    "int4": lambda x: int_minmax(x, 4),
    "binary": binary,
    "ternary": lambda x: ternary(x.reshape(1, -1)),
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
@FAST
@given(x=tensors(finite))
def test_finite_output_for_finite_input(name, x):
    if name == "int4":
        # INT: see int_elements; test_int_no_nan_* in test_quantizer_values.py cover the rest
        x = torch.where(x.abs() < 2.0**-90, torch.zeros_like(x), x.clamp(-(2.0**120), 2.0**120))
    assert bool(torch.isfinite(QUANTIZERS[name](x)).all())


@pytest.mark.parametrize("name", list(QUANTIZERS))
@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -3.5, 1e-30, 1e30])
def test_finite_output_for_constant_tensor(name, value):
    q = QUANTIZERS[name](torch.full((2, 5), value))
    assert bool(torch.isfinite(q).all())
    if name == "binary" and value == 0.0:
        assert torch.equal(q, torch.ones_like(q))  # exact zeros give +1
    elif name in ("int4",) or value == 0.0:
        assert torch.equal(q, torch.zeros_like(q))


# --- integer codes ----------------------------------------------------------------------------

# pow2 codes share one scale 2^e with e the smallest exponent present: keep magnitudes
# >= 2^-30 (or 0) so codes fit in int64; see test_pow2_codes_tiny_and_large_values.
codes_elements = st.one_of(
    st.just(0.0),
    st.floats(2.0**-30, MAX, width=32),
    st.floats(-MAX, -(2.0**-30), width=32),
)

CODE_SPECS = [
    QuantSpec("fixed", 3, 3),
    QuantSpec("fixed", 0, 2),
    QuantSpec("fixed", 8, 8),
    QuantSpec("fixed", 4, 0),
    QuantSpec("fixed", 2, 4, overflow="saturate"),
    QuantSpec("fixed", 0, 2, rounding="pow2"),
    QuantSpec("fixed", 6, 0, rounding="pow2"),
    QuantSpec("fixed", 2, 3, rounding="pow2"),
    QuantSpec("int", 4),
    QuantSpec("binary"),
]


@pytest.mark.parametrize("spec", CODE_SPECS, ids=str)
@FAST
@given(x=tensors(codes_elements))
def test_codes_times_scale_is_quantized_tensor(spec, x):
    codes, scale = spec.codes(x)
    assert not codes.dtype.is_floating_point
    assert torch.equal(codes * scale, spec(x))


@pytest.mark.parametrize("spec", CODE_SPECS[:5], ids=str)
@FAST
@given(x=tensors(moderate))
def test_nearest_codes_are_bounded(spec, x):
    codes, scale = spec.codes(x)
    assert scale == 2.0**-spec.f_bits
    assert bool((codes.abs() <= 2 ** (spec.i_bits + spec.f_bits)).all())


@FAST
@given(weights)
def test_ternary_codes(w):
    spec = QuantSpec("ternary")
    codes, alpha = spec.codes(w)
    assert set(codes.unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(codes * alpha, spec(w))


def test_pow2_codes_tiny_and_large_values():
    """Unbounded pow2 (the original rule): one data-dependent scale 2^e serves the whole tensor,
    and a dynamic range beyond int64 is refused, not wrapped.

    x = [1e-30, 1.0] at pow2 (0, 2): q = [2^-100, 0.75] would need the code 0.75 * 2^100.
    """
    with pytest.raises(ValueError, match="no int64 codes"):
        Fn.fixed_point_codes(torch.tensor([1e-30, 1.0]), 0, 2, "pow2")
    x = torch.tensor([2.0**-50, 1.0])  # 2^50 apart: fits
    codes, scale = Fn.fixed_point_codes(x, 0, 2, "pow2")
    assert scale == 2.0**-50 and torch.equal(codes * scale, fixed_point(x, 0, 2, "pow2"))


def test_bounded_pow2_codes_have_a_fixed_scale():
    """With pow2_min_exponent the scale is 2^min(e_min, -f) whatever the data (1e-30 is flushed)."""
    spec = QuantSpec("fixed", 0, 2, rounding="pow2", pow2_min_exponent=-6)
    for x in (torch.tensor([1e-30, 1.0]), torch.tensor([0.3]), torch.zeros(2)):
        codes, scale = spec.codes(x)
        assert scale == 2.0**-6 and torch.equal(codes * scale, spec(x))
    assert spec.codes(torch.tensor([1e-30, 1.0]))[0].tolist() == [0, 48]  # 0.75 = 48 * 2^-6
    assert QuantSpec("fixed", 0, 10, rounding="pow2", pow2_min_exponent=-6).codes(torch.ones(1))[1] == 2.0**-10


def test_float_spec_has_no_codes():
    with pytest.raises(ValueError):
        QuantSpec("float").codes(torch.ones(3))


# --- straight-through gradients ---------------------------------------------------------------

STE_QUANTIZERS = {
    "wrap": lambda x: fixed_point(x, 3, 3),
    "wrap-0-2": lambda x: fixed_point(x, 0, 2, "nearest", "wrap"),
    "saturate": lambda x: fixed_point(x, 2, 2, "nearest", "saturate"),
    "saturate-0-0": lambda x: fixed_point(x, 0, 0, "nearest", "saturate"),
    "pow2": lambda x: fixed_point(x, 4, 0, "pow2"),
    "pow2-0-2": lambda x: fixed_point(x, 0, 2, "pow2"),
    "int4": lambda x: int_minmax(x, 4),
    "ternary": lambda x: ternary(x.reshape(2, -1)).reshape(x.shape),
}

pairs = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(moderate, min_size=2 * n, max_size=2 * n),
        st.lists(st.floats(-100, 100, width=32), min_size=2 * n, max_size=2 * n),
    )
)


@pytest.mark.parametrize("name", list(STE_QUANTIZERS))
@FAST
@given(xg=pairs)
def test_straight_through_gradient_is_identity(name, xg):
    x = torch.tensor(xg[0], dtype=torch.float32, requires_grad=True)
    g = torch.tensor(xg[1], dtype=torch.float32)
    (STE_QUANTIZERS[name](x) * g).sum().backward()
    assert torch.equal(x.grad, g)


@FAST
@given(xg=pairs)
def test_binary_gradient_cancelled_outside_unit_interval(xg):
    x = torch.tensor(xg[0], dtype=torch.float32, requires_grad=True)
    g = torch.tensor(xg[1], dtype=torch.float32)
    (binary(x) * g).sum().backward()
    expected = torch.where(x.detach().abs() <= 1, g, torch.zeros_like(g))
    assert torch.equal(x.grad, expected)


def test_binary_gradient_at_the_boundary():
    """|x| <= 1 is inclusive: x = ±1 pass the gradient, the next floats outside do not."""
    above = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item()
    x = torch.tensor([-above, -1.0, -0.5, 0.0, 0.5, 1.0, above], requires_grad=True)
    g = torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    (binary(x) * g).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 3.0, 4.0, 5.0, 6.0, 7.0, 0.0]))
