"""The speed rewrites of issue 16 change no value: each rewritten rule equals the code it
replaced (kept here as the reference), special values included, and a short training run per
mode through the real trainer writes the same metrics.csv with the old and the new code."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantizer import QuantConv2d, QuantSpec, binary, native
from quantizer import autograd as ste
from quantizer import functional as F
from quantizer import modules as quant_modules
from unet import metrics as unet_metrics
from unet import runtime
from unet.config import load_config
from unet.prep.em import prepare_em, synthetic_em_stack
from unet.recipes import png_pair_recipe
from unet.train import run

REPO = Path(__file__).resolve().parents[1]
EM_BASE = REPO / "EM_BASE" / "config.yaml"

# --- the code before the rewrite ----------------------------------------------------------


@torch.no_grad()
def old_int_minmax_forward(x, bits, inplace=False):
    lo, hi = torch.aminmax(x)
    span = hi - lo
    if span <= 0:
        return x.zero_() if inplace else torch.zeros_like(x)
    if torch.isinf(span):
        lo, span = lo * 0.5, hi * 0.5 - lo * 0.5
        q = x.mul_(0.5) if inplace else torch.mul(x, 0.5)
        q.sub_(lo)
    else:
        q = x.sub_(lo) if inplace else torch.sub(x, lo)
    return q.div_(span).mul_(2.0**bits).floor_().sub_(2.0 ** (bits - 1))


class OldBinarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, inplace):
        ctx.save_for_backward(torch.ge(x, -1.0).logical_and_(torch.le(x, 1.0)))
        if inplace:
            ctx.mark_dirty(x)
        return F.binary_forward(x, inplace)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, 0.0), None


@torch.no_grad()
def old_fixed_point_pow2(x, i_bits, f_bits, inplace=False, min_exponent=None):
    limit = F.pow2_limit(i_bits, f_bits)
    p = torch.abs(x)
    p.log2_().round_().exp2_()
    if min_exponent is not None:
        p.masked_fill_(p < 2.0**min_exponent, 0.0)
    p.clamp_max_(limit)
    return torch.copysign(p, x, out=x) if inplace else p.copysign_(x)


def old_hausdorff(pred: np.ndarray, gt: np.ndarray) -> float:
    from skimage.metrics import hausdorff_distance

    has_pred, has_gt = pred.any(), gt.any()
    if not has_pred and not has_gt:
        return 0.0
    if has_pred != has_gt:
        return float(np.hypot(*pred.shape))
    return float(hausdorff_distance(pred, gt))


def uncached_quantized_weight(self: QuantConv2d) -> torch.Tensor:
    return self.weight_quant(self.weight)


def use_old_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_enabled", False)  # the fused kernels came later still
    monkeypatch.setattr(F, "int_minmax_forward", old_int_minmax_forward)
    monkeypatch.setattr(F, "_aminmax", torch.aminmax)
    monkeypatch.setattr(ste, "_BinarySTE", OldBinarySTE)
    monkeypatch.setattr(F, "fixed_point_pow2", old_fixed_point_pow2)
    monkeypatch.setattr(unet_metrics, "_hausdorff", old_hausdorff)
    monkeypatch.setattr(quant_modules.QuantConv2d, "quantized_weight", uncached_quantized_weight)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal: same dtype and shape, equal values with equal signs of zero, NaN matching NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    equal = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((equal | (a.isnan() & b.isnan())).all())


SPECIAL = [0.0, -0.0, float("inf"), -float("inf"), 1.0, -1.0, 0.5, 2.5, 2.0**-126, 2.0**-149, -(2.0**-149),
           3.0e38, -3.0e38, 1.4142135, 1.4142137, 0.70710677]


def samples(seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """Tensors of every scale, with special values, some 4-D in channels_last (the model's layout)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for scale in (1e-42, 1e-30, 1e-3, 1.0, 7.0, 1e4, 1e30, 3e38):
        x = torch.randn(2, 5, 6, 7, generator=g) * scale
        out += [x.to(dtype), x.to(dtype).contiguous(memory_format=torch.channels_last)]
        out.append(torch.cat([x.flatten(), torch.tensor(SPECIAL)]).to(dtype))
    out.append(torch.full((3, 4), 2.5, dtype=dtype))  # constant
    out.append(torch.tensor([1.0, float("nan"), -2.0], dtype=dtype))
    out.append(torch.randn(4, 3, 5, 5, generator=g).to(dtype)[:, :, ::2])  # not dense
    return out


# --- INT min-max: flat reduction, one division ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bits", [0, 1, 2, 4, 8, 16, 24, 31, 100, 127, 200])
def test_int_minmax_is_bit_equal_to_the_old_rule(bits: int, dtype: torch.dtype) -> None:
    for x in samples(bits, dtype):
        assert same(F.int_minmax_forward(x, bits), old_int_minmax_forward(x, bits)), (bits, x.flatten()[:4])
        a, b = x.clone(), x.clone()
        F.int_minmax_forward(a, bits, inplace=True)
        old_int_minmax_forward(b, bits, inplace=True)
        assert same(a, b)


def test_int_minmax_random_spans_match_the_old_rule() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        scale = float(10.0 ** (torch.rand(1, generator=g) * 82 - 44))
        offset = float(torch.randn(1, generator=g)) * scale * float(torch.rand(1, generator=g) * 100)
        x = torch.randn(int(torch.randint(2, 400, (1,), generator=g)), generator=g) * scale + offset
        for bits in (1, 4, 8, 16):
            assert same(F.int_minmax_forward(x, bits), old_int_minmax_forward(x, bits)), (scale, offset, bits)


def test_flat_reduction_sees_every_element_in_every_layout() -> None:
    x = torch.randn(2, 3, 4, 5)
    x[1, 2, 3, 4] = 9.0
    x[0, 0, 1, 1] = -9.0
    for t in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, 1::2], x.transpose(1, 3)):
        lo, hi = F._aminmax(t)
        assert float(lo) == -9.0 and float(hi) == 9.0
    cl = x.contiguous(memory_format=torch.channels_last)
    assert F._flat(cl).data_ptr() == cl.data_ptr()  # a view, no copy


@pytest.mark.parametrize("i_bits,f_bits", [(0, 2), (3, 3), (8, 8), (1, 4)])
def test_fixed_wrap_uses_the_flat_reduction_without_changing_values(
        monkeypatch: pytest.MonkeyPatch, i_bits: int, f_bits: int) -> None:
    new = [F.fixed_point_nearest_wrap(x, i_bits, f_bits) for x in samples(5)]
    monkeypatch.setattr(F, "_aminmax", torch.aminmax)
    old = [F.fixed_point_nearest_wrap(x, i_bits, f_bits) for x in samples(5)]
    assert all(same(a, b) for a, b in zip(new, old, strict=True))


# --- BNN: no gradient mask when no gradient is asked for -------------------------------------


def test_binary_values_and_gradients_match_the_old_function() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(500, generator=g) * 2, torch.tensor([1.0, -1.0, 0.0, 1.0000001, float("nan")])])
    for inplace in (False, True):
        grads = []
        for fn in (binary, OldBinarySTE.apply):
            leaf = x.clone().requires_grad_(True)
            out = fn(leaf * 1.0, inplace)
            (out * torch.arange(out.numel())).sum().backward()
            grads.append((out.detach(), leaf.grad))
        assert same(grads[0][0], grads[1][0]) and same(grads[0][1], grads[1][1])
    with torch.no_grad():
        assert same(binary(x.clone(), True), OldBinarySTE.apply(x.clone(), True))


# --- pow2: the bit rule that log2/round/exp2 computes ------------------------------------------


def pow2_thresholds() -> dict[int, int]:
    """For each exponent e of a normal float32 ``m 2^e``, the smallest 23-bit mantissa field M
    that rounds up to 2^(e+1): ``round_half_even(fl32(e + log2 m)) = e + 1``, with log2 in
    float64 and then rounded to float32 (as a correctly rounded float32 log2 would)."""
    mant = np.arange(3474500, 3474900, dtype=np.float64)
    out = {}
    for e in range(-126, 128):
        y = (e + np.log2(1.0 + mant / 2.0**23)).astype(np.float32)
        up = np.round(y) == e + 1  # numpy rounds half to even
        out[e] = int(mant[np.argmax(up)])
    return out


def test_pow2_rounding_is_a_per_exponent_mantissa_threshold() -> None:
    """Every normal float32 rounds to 2^e below a threshold mantissa T(e) and to 2^(e+1) from
    it on; T(e) is the sqrt(2) point only near e = 0 and moves with |e| and e's parity (ties
    of the float32 log2 go to the even exponent). This is why a constant-threshold bit trick
    is not bit-equal (see functional._round_pow2_)."""
    thresholds = pow2_thresholds()
    g = torch.Generator().manual_seed(0)
    window = torch.arange(3474500 - 300, 3474900 + 300, dtype=torch.int32)
    rand = torch.randint(0, 2**23, (2000,), generator=g, dtype=torch.int32)
    mants = torch.cat([window, rand, torch.tensor([0, 1, 2**23 - 1], dtype=torch.int32)])
    for e in range(-126, 128):
        bits = mants + ((e + 127) << 23)
        x = bits.view(torch.float32)
        got = F._round_pow2_(x.clone()).view(torch.int32)
        expected = torch.where(mants >= thresholds[e], (e + 128) << 23, (e + 127) << 23)
        assert torch.equal(got, expected), e
    assert {thresholds[e] for e in range(-126, 128)} != {thresholds[0]}
    assert thresholds[0] == 3474676 and thresholds[1] == 3474675  # e = 1: the tie 1.5 rounds to 2


def test_pow2_rounding_of_special_values_and_subnormals() -> None:
    x = torch.tensor([0.0, float("inf"), float("nan"), 2.0**-149, 2.0**-130, 3.0e38])
    got = F._round_pow2_(x.clone())
    assert got[0] == 0 and got[1] == float("inf") and got[2].isnan()
    assert got[3] == 2.0**-149 and got[4] == 2.0**-130 and got[5] == float("inf")  # log2(3e38) = 127.8
    sub = torch.arange(1, 2**23, dtype=torch.int32).view(torch.float32)
    r = F._round_pow2_(sub.clone())
    assert bool((r[1:] >= r[:-1]).all())  # monotone
    k = torch.log2(r)
    assert bool((k == k.round()).all()) and bool(((r / sub) <= 2.0**0.5 + 1e-3).all())


def test_fixed_pow2_matches_the_literal_formula() -> None:
    for x in samples(7):
        ref = torch.exp2(torch.round(torch.log2(x.abs()))).clamp_max(F.pow2_limit(6, 0)).copysign(x)
        assert same(F.fixed_point_pow2(x, 6, 0), ref)


@pytest.mark.parametrize("i_bits,f_bits", [(6, 0), (1, 0), (0, 1), (0, 4), (0, 0), (2, 3), (8, 8)])
@pytest.mark.parametrize("min_exponent", [None, -126, -125, -8, -1, 0, 3, 5, 6, 126])
def test_pow2_floor_clamp_and_exponent_flush_are_bit_equal_to_the_old_rule(
        i_bits: int, f_bits: int, min_exponent: int | None) -> None:
    for x in samples(11) + [torch.tensor([2.0**-8, 2.0**-8.5, 2.0**-8.4999, 2.0**-8.5001, 2.0**-9, -(2.0**-8.5),
                                          2.0**-126, 2.0**-126.5, 2.0**-127, 2.0**126, 2.0**126.5, 2.0**3.5,
                                          2.0**5.4999, 2.0**5.5, 2.0**5.5001, 2.0**-0.5, 0.75, 1.0, 31.0, 32.0])]:
        assert same(F.fixed_point_pow2(x, i_bits, f_bits, False, min_exponent),
                    old_fixed_point_pow2(x, i_bits, f_bits, False, min_exponent)), (x.flatten()[:4], min_exponent)
        a, b = x.clone(), x.clone()
        F.fixed_point_pow2(a, i_bits, f_bits, True, min_exponent)
        old_fixed_point_pow2(b, i_bits, f_bits, True, min_exponent)
        assert same(a, b)


# --- Hausdorff from distance transforms --------------------------------------------------------


def random_masks(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs of boolean masks: random densities and shapes, blobs, single pixels, full masks,
    thin lines, one mask inside a hole of the other."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(60):
        shape = tuple(int(v) for v in rng.integers(1, 40, size=2))
        density = rng.choice([0.001, 0.02, 0.3, 0.7, 0.99])
        pairs.append((rng.random(shape) < density, rng.random(shape) < density * rng.random()))
    full, dot = np.ones((9, 13), bool), np.zeros((9, 13), bool)
    dot[8, 0] = True
    ring = np.ones((21, 21), bool)
    ring[5:16, 5:16] = False
    centre = np.zeros((21, 21), bool)
    centre[10, 10] = True
    column, row = np.zeros((30, 7), bool), np.zeros((30, 7), bool)
    column[:, 3] = True
    row[15, :] = True
    pairs += [(full, dot), (dot, full), (ring, centre), (centre, ring), (column, row), (dot, dot)]
    return pairs


def test_hausdorff_equals_scikit_image_on_random_masks() -> None:
    for pred, gt in random_masks(0):
        assert unet_metrics._hausdorff(pred, gt) == old_hausdorff(pred, gt), (pred.shape, pred.sum(), gt.sum())
    ring = np.ones((21, 21), bool)
    ring[5:16, 5:16] = False
    square = np.ones((21, 21), bool)
    # attained at the square's centre, inside the ring's hole: not at a boundary pixel of the square
    assert unet_metrics._hausdorff(square, ring) == old_hausdorff(square, ring) == 6.0


# --- quantized weights cached in evaluation mode -----------------------------------------------


@pytest.mark.parametrize("spec", [QuantSpec("ternary"), QuantSpec("fixed", 0, 4, "pow2"), QuantSpec("int", 8),
                                  QuantSpec("binary")])
def test_eval_weight_cache_equals_a_fresh_quantization_and_follows_every_change(spec: QuantSpec) -> None:
    torch.manual_seed(0)
    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=spec).eval()
    fresh = lambda: spec(conv.weight.detach().clone())  # noqa: E731
    with torch.no_grad():
        first = conv.quantized_weight()
        assert conv.quantized_weight() is first and same(first, fresh())  # reused, and the same values
        conv.weight.mul_(-3.0)  # any in-place change: a new quantization
        assert same(conv.quantized_weight(), fresh()) and not same(conv.quantized_weight(), first)
        conv.load_state_dict({"weight": torch.randn(4, 3, 3, 3), "bias": torch.zeros(4)})
        assert same(conv.quantized_weight(), fresh())
        conv.weight.data = torch.randn(4, 3, 3, 3)  # a replaced tensor
        assert same(conv.quantized_weight(), fresh())
        conv.to(memory_format=torch.channels_last)
        assert same(conv.quantized_weight(), fresh())
        conv.weight_quant = QuantSpec("fixed", 1, 2)
        assert same(conv.quantized_weight(), QuantSpec("fixed", 1, 2)(conv.weight))
    conv.weight_quant = spec
    # gradients still reach the weight when they are asked for, in eval mode too
    conv(torch.randn(2, 3, 5, 5)).sum().backward()
    assert conv.weight.grad is not None and bool(conv.weight.grad.abs().sum() > 0)
    # an optimizer step in training mode, then eval again: the new weights are used
    conv.train()
    assert conv._cached is None
    torch.optim.SGD(conv.parameters(), lr=0.5).step()
    conv.eval()
    with torch.no_grad():
        assert same(conv.quantized_weight(), fresh())


def test_eval_forward_with_the_cache_equals_the_uncached_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    from unet.model import UNet, quant_specs

    x = torch.rand(2, 1, 16, 16)
    for mode in ("ternary", "fixed", "int", "bnn"):
        torch.manual_seed(0)
        model = UNet(4, *quant_specs(mode, 2, 2, 0, 4, "pow2")).eval()
        with torch.no_grad():
            cached = [model(x), model(x)]
            with monkeypatch.context() as patch:
                patch.setattr(QuantConv2d, "quantized_weight", uncached_quantized_weight)
                plain = model(x)
        assert same(cached[0], plain) and same(cached[1], plain), mode


# --- the allocator setting ---------------------------------------------------------------------


def test_tune_allocator_applies_once_and_respects_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runtime.ENV_SWITCH, "0")
    assert runtime._apply() is False
    monkeypatch.delenv(runtime.ENV_SWITCH)
    expected = sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc"
    assert runtime._apply() is expected
    first = runtime.tune_allocator()
    assert runtime.tune_allocator() is first is expected


# --- a short training run per mode: same metrics.csv with the old and the new code -----------

MODE_OVERRIDES = {
    "normal": ["quantization=Normal"],
    "fixed_nearest": ["quantization=FIXED", "activation_i_width=2", "activation_f_width=2",
                      "weight_i_width=0", "weight_f_width=4", "fixed_rounding=nearest"],
    "fixed_pow2": ["quantization=FIXED", "activation_i_width=6", "weight_f_width=4", "fixed_rounding=pow2"],
    "int": ["quantization=INT", "activation_i_width=8", "weight_i_width=8"],
    "bnn": ["quantization=BNN"],
    "ternary": ["quantization=Ternary"],
}


@pytest.fixture(scope="module")
def em_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    volume, labels = synthetic_em_stack(n_slices=6, size=64, seed=0)
    root = tmp_path_factory.mktemp("em") / "em"
    prepare_em(volume, labels, root, val_slices=[4, 5], resize=32, crop=32)
    return root


def train_metrics(data: Path, out: Path, overrides: list[str]) -> list[dict[str, str]]:
    recipe = png_pair_recipe("EM", EM_BASE, "prepare", isbi_metrics=True)
    cfg = load_config(EM_BASE, EM_BASE, overrides=overrides + [
        f"dataset_path={data}", "crop_size=[32, 32]", "base_channels=4", "num_epochs=2", "batch_size=2",
        "val_batch_size=2", f"log_output_dir={out}", "experiment_name=run", "lr=0.01"])
    assert run(cfg, recipe, script="test") == 0
    with open(out / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        del row["seconds"]  # wall-clock time, the one column allowed to differ
    return rows


@pytest.mark.parametrize("mode", list(MODE_OVERRIDES))
def test_training_run_metrics_are_identical_to_the_old_code(
        mode: str, em_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    overrides = MODE_OVERRIDES[mode] + (["val_bn_mode=eval"] if mode in ("int", "bnn") else [])
    new = train_metrics(em_data, tmp_path / "new", overrides)
    with monkeypatch.context() as patch:
        use_old_code(patch)
        old = train_metrics(em_data, tmp_path / "old", overrides)
    capsys.readouterr()
    assert len(new) == 2 and new == old


def test_allocator_setting_leaves_a_trained_run_unchanged(em_data: Path, tmp_path: Path) -> None:
    """The real EM trainer, FIXED pow2, with and without ``tune_allocator`` (two processes)."""
    runs = []
    for switch in ("1", "0"):
        folder = tmp_path / f"alloc{switch}"
        folder.mkdir()
        shutil.copy(REPO / "em" / "a6.0_w0.4" / "config.yaml", folder / "config.yaml")
        (folder / "em_unet.py").symlink_to(REPO / "EM_BASE" / "em_unet.py")
        args = ["-o", f"dataset_path={em_data}", "-o", "crop_size=[32, 32]", "-o", "base_channels=4", "-o",
                "num_epochs=2", "-o", "batch_size=2", "-o", "val_batch_size=2", "-o", "lr=0.01"]
        env = {**os.environ, runtime.ENV_SWITCH: switch}
        result = subprocess.run([sys.executable, "em_unet.py", "-f", "config.yaml", "-t", "UNET", *args],
                                cwd=folder, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        with open(folder / "runs" / folder.name / "metrics.csv", newline="") as handle:
            runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(handle)])
    assert len(runs[0]) == 2 and runs[0] == runs[1]
