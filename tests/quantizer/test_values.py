"""Exact values of every quantizer of SPEC §3: the worked-example table, the listed quirks and
hand-computed examples. All inputs are float32 and every expected value is exactly
representable, so comparisons are exact (``torch.equal``). The same expected values hold for the
literal rules of :mod:`quantizer.reference` (the oracle of the property tests), checked beside."""

from __future__ import annotations

import pytest
import torch

from quantizer import binary, fixed_point, int_minmax, ternary
from quantizer import reference as R
from quantizer.functional import pow2_limit, ternary_threshold_and_scale


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def assert_exact(got: torch.Tensor, expected) -> None:
    expected = t(expected)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected), f"got {got.tolist()}, expected {expected.tolist()}"


def f32(values) -> list[float]:
    """``values`` rounded to float32, as Python floats (the inputs the reference is given)."""
    return t(values).tolist()


def reference_exact(rule, xs, expected, *args) -> None:
    """The reference ``rule(x, *args)`` of each float32 ``x`` equals ``expected`` exactly."""
    got = [rule(x, *args) for x in f32(xs)]
    assert got == f32(expected), f"reference {rule.__name__}: got {got}, expected {expected}"


# --- the worked-example table of SPEC §3 ----------------------------------------------------
# input -> nearest/wrap at (0,2), (4,0), (6,0), (8,8); pow2 at (0,2), (4,0), (6,0)
TABLE = {
    0.1: ((0, 0, 0, 0.1015625), (0.125, 0.125, 0.125)),
    0.125: ((0, 0, 0, 0.125), (0.125, 0.125, 0.125)),
    0.3: ((0.25, 0, 0, 0.30078125), (0.25, 0.25, 0.25)),
    0.375: ((0.5, 0, 0, 0.375), (0.5, 0.5, 0.5)),
    0.9: ((1.0, 0, 0, 0.8984375), (0.75, 1, 1)),
    1.3: ((0.25, 1, 1, 1.30078125), (0.75, 1, 1)),
    2.7: ((0.75, 2, 2, 2.69921875), (0.75, 2, 2)),
    15.99: ((1.0, 15, 15, 15.98828125), (0.75, 8, 16)),
    100.75: ((0.75, 15, 63, 100.75), (0.75, 8, 32)),
    -20.6: ((-0.5, -15, -20, -20.6015625), (-0.75, -8, -16)),
    0.001: ((0, 0, 0, 0), (2**-10, 2**-10, 2**-10)),
}
WRAP_FORMATS = [(0, 2), (4, 0), (6, 0), (8, 8)]
POW2_FORMATS = [(0, 2), (4, 0), (6, 0)]

WRAP_CASES = [
    pytest.param(x, i, f, row[0][k], id=f"wrap-Q{i}.{f}-{x}")
    for x, row in TABLE.items()
    for k, (i, f) in enumerate(WRAP_FORMATS)
]
POW2_CASES = [
    pytest.param(x, i, f, row[1][k], id=f"pow2-Q{i}.{f}-{x}")
    for x, row in TABLE.items()
    for k, (i, f) in enumerate(POW2_FORMATS)
]


@pytest.mark.parametrize(("x", "i", "f", "expected"), WRAP_CASES)
def test_table_nearest_wrap(x, i, f, expected):
    assert_exact(fixed_point(t([x]), i, f, "nearest", "wrap"), [expected])
    reference_exact(R.fixed_point_nearest_wrap, [x], [expected], i, f)


@pytest.mark.parametrize(("x", "i", "f", "expected"), POW2_CASES)
def test_table_pow2(x, i, f, expected):
    assert_exact(fixed_point(t([x]), i, f, "pow2"), [expected])
    reference_exact(R.fixed_point_pow2, [x], [expected], i, f)


@pytest.mark.parametrize(("i", "f"), WRAP_FORMATS)
def test_table_whole_column_at_once(i, f):
    """The same table as one tensor: the rule is element-wise (no per-tensor statistics)."""
    xs = list(TABLE)
    k = WRAP_FORMATS.index((i, f))
    assert_exact(fixed_point(t(xs), i, f), [TABLE[x][0][k] for x in xs])


def test_default_variant_is_nearest_wrap():
    x = t([0.9, 1.3, 15.99, -20.6])
    assert torch.equal(fixed_point(x, 0, 2), fixed_point(x, 0, 2, "nearest", "wrap"))


def test_pow2_ignores_overflow_argument():
    x = t(list(TABLE))
    wrap = fixed_point(x, 4, 0, "pow2", "wrap")
    assert torch.equal(wrap, fixed_point(x, 4, 0, "pow2", "saturate"))


# --- the quirks of nearest/wrap ---------------------------------------------------------------


def test_wrap_q3_3_fraction_survives_above_range():
    assert_exact(fixed_point(t([15.99, 16.5, -15.99, -16.5]), 3, 3), [8.0, 7.5, -8.0, -7.5])
    reference_exact(R.fixed_point_nearest_wrap, [15.99, 16.5, -15.99, -16.5], [8.0, 7.5, -8.0, -7.5], 3, 3)


def test_wrap_q0_2_levels():
    x = torch.linspace(-3, 3, 2001)
    levels = set(fixed_point(x, 0, 2).tolist())
    assert levels == {0.0, 0.25, -0.25, 0.5, -0.5, 0.75, -0.75, 1.0, -1.0}


def test_wrap_q0_2_wraps_modulo_one():
    assert_exact(fixed_point(t([1.3, -1.3, 2.3, 7.5]), 0, 2), [0.25, -0.25, 0.25, 0.5])
    reference_exact(R.fixed_point_nearest_wrap, [1.3, -1.3, 2.3, 7.5], [0.25, -0.25, 0.25, 0.5], 0, 2)


def test_wrap_fraction_rounds_up_to_one():
    assert_exact(fixed_point(t([0.9, -0.9]), 0, 2), [1.0, -1.0])


def test_wrap_largest_magnitude_is_two_to_the_i():
    """|q| reaches 2^i (not 2^i - 2^-f): 2^i - 1 plus a fraction rounded up to 1."""
    assert_exact(fixed_point(t([7.99, -7.99, 1e6]), 3, 2), [8.0, -8.0, 7.0])
    reference_exact(R.fixed_point_nearest_wrap, [7.99, -7.99, 1e6], [8.0, -8.0, 7.0], 3, 2)


def test_wrap_f0_truncates_toward_zero():
    assert_exact(fixed_point(t([0.99, -0.99, 1.99, -2.5]), 4, 0), [0.0, 0.0, 1.0, -2.0])
    reference_exact(R.fixed_point_nearest_wrap, [0.99, -0.99, 1.99, -2.5], [0.0, 0.0, 1.0, -2.0], 4, 0)


def test_wrap_round_half_to_even_in_fraction():
    # fractions 0.125 * 4 = 0.5 -> 0, 0.375 * 4 = 1.5 -> 2, 0.625 * 4 = 2.5 -> 2
    assert_exact(fixed_point(t([0.125, 0.375, 1.625]), 2, 2), [0.0, 0.5, 1.5])
    reference_exact(R.fixed_point_nearest_wrap, [0.125, 0.375, 1.625], [0.0, 0.5, 1.5], 2, 2)


# --- nearest/saturate, by hand ----------------------------------------------------------------

SATURATE_CASES = [
    # (i, f, inputs, expected)
    (0, 2, [0.1, 0.125, 0.3, 0.375, 0.9, 1.3, -20.6], [0, 0, 0.25, 0.5, 0.75, 0.75, -0.75]),
    (4, 0, [0.5, 0.9, 1.5, 2.5, 2.7, 15.99, 100.75, -20.6], [0, 1, 2, 2, 3, 15, 15, -15]),
    (3, 3, [15.99, 16.5, 7.9, 7.95, -7.95], [7.875, 7.875, 7.875, 7.875, -7.875]),
    (8, 8, [0.1, 100.75, 300.0, -0.001], [0.1015625, 100.75, 255.99609375, 0.0]),
    (0, 0, [0.4, 0.6, 1.0, 3.7, -100.0, 1e30], [0, 0, 0, 0, 0, 0]),
]


@pytest.mark.parametrize(
    ("i", "f", "xs", "expected"), SATURATE_CASES, ids=[f"Q{c[0]}.{c[1]}" for c in SATURATE_CASES]
)
def test_saturate_by_hand(i, f, xs, expected):
    assert_exact(fixed_point(t(xs), i, f, "nearest", "saturate"), expected)
    reference_exact(R.fixed_point_nearest_saturate, xs, expected, i, f)


@pytest.mark.parametrize(("i", "f"), [(0, 2), (3, 3), (4, 0), (2, 5)])
def test_saturate_monotone_on_a_sweep(i, f):
    x = torch.linspace(-40, 40, 20001)
    q = fixed_point(x, i, f, "nearest", "saturate")
    assert bool((q[1:] >= q[:-1]).all())
    assert q.max().item() == 2.0**i - 2.0**-f
    assert q.min().item() == -(2.0**i - 2.0**-f)


def test_wrap_is_not_monotone_but_saturate_is():
    """The wrap quirk 15.99 -> 8.0 > 16.5 -> 7.5 at Q3.3 is gone under saturate."""
    wrap = fixed_point(t([15.99, 16.5]), 3, 3)
    sat = fixed_point(t([15.99, 16.5]), 3, 3, "nearest", "saturate")
    assert wrap[0] > wrap[1]
    assert sat[0] <= sat[1]


# --- pow2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("i", "f", "m"),
    [
        (0, 2, 0.75),
        (0, 4, 0.9375),
        (6, 0, 32.0),
        (4, 0, 8.0),
        (4, 2, 8.75),
        (1, 0, 1.0),
        (0, 0, 0.0),
    ],
)
def test_pow2_limit(i, f, m):
    assert pow2_limit(i, f) == m == R.pow2_limit(i, f)
    assert_exact(fixed_point(t([1e6, -1e6]), i, f, "pow2"), [m, -m])
    reference_exact(R.fixed_point_pow2, [1e6, -1e6], [m, -m], i, f)


def test_pow2_zero_stays_zero_and_small_values_stay_small():
    x = t([0.0, 2.0**-20, -(2.0**-20), 0.001])
    assert_exact(fixed_point(x, 0, 2, "pow2"), [0.0, 2.0**-20, -(2.0**-20), 2.0**-10])
    reference_exact(R.fixed_point_pow2, x.tolist(), [0.0, 2.0**-20, -(2.0**-20), 2.0**-10], 0, 2)
    reference_exact(R.fixed_point_pow2, x.tolist(), [0.0, 0.0, 0.0, 0.0], 0, 2, -8)  # the project's bound


def test_pow2_q0_4_clamps_to_m():
    assert_exact(fixed_point(t([0.9, 0.7, -0.9]), 0, 4, "pow2"), [0.9375, 0.5, -0.9375])
    reference_exact(R.fixed_point_pow2, [0.9, 0.7, -0.9], [0.9375, 0.5, -0.9375], 0, 4)


def test_pow2_i0_f0_gives_zeros():
    assert_exact(fixed_point(t([0.3, -5.0, 0.0]), 0, 0, "pow2"), [0.0, 0.0, 0.0])


# --- INT ----------------------------------------------------------------------------------------


def test_int_spec_example_b4():
    assert_exact(int_minmax(t([-1.0, 0.0, 0.5, 1.0]), 4), [-8, 0, 4, 8])
    assert R.int_minmax([-1.0, 0.0, 0.5, 1.0], 4) == [-8, 0, 4, 8]


def test_int_b2_on_a_power_of_two_span():
    # n = x / 4, floor(4 n) - 2
    assert_exact(int_minmax(t([0.0, 1.0, 2.0, 3.0, 4.0]), 2), [-2, -1, 0, 1, 2])
    assert R.int_minmax([0.0, 1.0, 2.0, 3.0, 4.0], 2) == [-2, -1, 0, 1, 2]


def test_int_is_per_tensor():
    """min and max are over the whole tensor, not per row."""
    x = t([[-1.0, 0.0], [0.5, 1.0]])
    assert_exact(int_minmax(x, 4), [[-8, 0], [4, 8]])


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_int_constant_tensor_gives_zeros(value):
    q = int_minmax(torch.full((3, 4), value), 4)
    assert_exact(q, [[0.0] * 4] * 3)
    assert R.int_minmax([value] * 12, 4) == [0.0] * 12


@pytest.mark.parametrize(
    "xs",
    [
        pytest.param([-3e38, 3e38], id="span-overflows"),
        pytest.param([0.0, 2.0**-126], id="span-tiny"),
        pytest.param([0.0, 1e-45], id="span-subnormal"),
    ],
)
def test_int_no_nan_for_extreme_finite_range(xs):
    """BUG (found): finite inputs give NaN/inf. The rule n = (x - min)/(max - min) puts
    these two-element tensors at n = [0, 1], so q = [-8, 8] at b = 4.

    The code computes ``(x - lo) * (2^b / span)``: with span = inf (max - min overflows)
    the factor is 0 and inf * 0 = NaN; with a tiny span the factor 2^b / span overflows to
    inf and 0 * inf = NaN (and the maximum becomes inf).
    """
    q = int_minmax(t(xs), 4)
    assert torch.isfinite(q).all(), q
    assert_exact(q, [-8, 8])
    assert R.int_minmax(f32(xs), 4) == [-8, 8]


# --- BNN ------------------------------------------------------------------------------------------


def test_binary_sign_values():
    """Two levels: exact zeros (either sign) give +1, not the original's sign(0) = 0 (README,
    differences); NaN gives +1 too (torch.sign(NaN) = 0)."""
    x = t([-2.0, -1.0, -0.5, -1e-30, 0.0, -0.0, 1e-30, 0.5, 1.0, 2.0, float("nan")])
    assert_exact(binary(x), [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1])
    assert [R.binary(v) for v in x.tolist()] == [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1]
    assert_exact(binary(x.clone(), inplace=True), [-1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1])


# --- Ternary --------------------------------------------------------------------------------------


def _two_channel_weight() -> torch.Tensor:
    # channel 0: mean|W| = 1.75/4 = 0.4375, delta = 0.30625, kept {1, 0.5}, alpha = 0.75
    # channel 1: mean|W| = 1.25/4 = 0.3125, delta = 0.21875, kept {0.25, 0.375, 0.5},
    #            alpha = 1.125/3 = 0.375
    return t([[[[1.0, -0.5], [0.25, 0.0]]], [[[0.125, 0.25], [-0.375, 0.5]]]])


def test_ternary_threshold_and_scale_by_hand():
    delta, alpha = ternary_threshold_and_scale(_two_channel_weight())
    assert delta.shape == alpha.shape == (2, 1, 1, 1)
    assert delta.flatten().tolist() == pytest.approx([0.30625, 0.21875], rel=1e-6)
    assert alpha.flatten().tolist() == [0.75, 0.375]


def test_ternary_two_channel_weight_by_hand():
    q = ternary(_two_channel_weight())
    assert_exact(q, [[[[0.75, -0.75], [0.0, 0.0]]], [[[0.0, 0.375], [-0.375, 0.375]]]])
    expected = [[0.75, -0.75, 0.0, 0.0], [0.0, 0.375, -0.375, 0.375]]
    assert R.ternary(_two_channel_weight().flatten(1).tolist()) == expected


def test_ternary_all_zero_filter_gives_zeros():
    w = torch.zeros(3, 2, 3, 3)
    w[1] = 0.5  # one nonzero filter next to two all-zero ones
    q = ternary(w)
    assert torch.isfinite(q).all()
    assert torch.equal(q[0], torch.zeros(2, 3, 3))
    assert torch.equal(q[2], torch.zeros(2, 3, 3))
    # constant filter: delta = 0.35, every entry kept, alpha = 0.5
    assert torch.equal(q[1], torch.full((2, 3, 3), 0.5))


def test_ternary_entirely_zero_weight():
    q = ternary(torch.zeros(4, 1, 3, 3))
    assert torch.equal(q, torch.zeros(4, 1, 3, 3))


def test_ternary_channels_are_independent():
    """Scaling one output channel leaves the other channel's result unchanged."""
    w = _two_channel_weight()
    w2 = w.clone()
    w2[0] *= 64
    q, q2 = ternary(w), ternary(w2)
    assert torch.equal(q[1], q2[1])
    assert torch.equal(q2[0], q[0] * 64)


def test_ternary_large_weights_do_not_overflow_the_threshold():
    """BUG (found): mean|W_c| overflows float32 for large finite weights, delta_c becomes inf
    and the whole filter is zeroed.

    W_0 = [3e38, 3e38, 0, 0]: mean|W| = 1.5e38, delta = 1.05e38, both large entries kept,
    alpha = 3e38, so q = [3e38, 3e38, 0, 0]; the code gives [0, 0, 0, 0] (its sum is inf).
    """
    q = ternary(t([[3e38, 3e38, 0.0, 0.0]]))
    assert_exact(q, [[3e38, 3e38, 0.0, 0.0]])
    assert R.ternary(t([[3e38, 3e38, 0.0, 0.0]]).tolist()) == t([[3e38, 3e38, 0.0, 0.0]]).tolist()


# --- ternarytanh (the reference; the model's activation is tested against it in test_model.py) ---


def test_reference_ternary_tanh_and_its_schedule_by_hand():
    # b = 3: x = 0.5 -> 0.5 tanh(0) + 0.5 tanh(6) = 0.49999386; x = 1 -> 0.5 (tanh 3 + tanh 9) = 0.99752736
    assert R.ternary_tanh(0.5, 3.0) == pytest.approx(0.49999386, abs=1e-8)
    assert R.ternary_tanh(1.0, 3.0) == pytest.approx(0.99752736, abs=1e-8)
    assert R.ternary_tanh(0.0, 3.0) == 0.0 and R.ternary_tanh(-1.0, 3.0) == -R.ternary_tanh(1.0, 3.0)
    assert [R.ternary_tanh_beta(e, 11) for e in (1, 6, 11)] == [3.0, 5.5, 8.0]
    assert R.ternary_tanh_beta(1, 1) == 3.0
