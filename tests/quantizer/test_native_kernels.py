"""The fused kernels of quantizer.native give the PyTorch rules' values bit for bit.

Each rule runs twice, kernels on and off (``native.enabled``), on tensors of every scale,
special values (zeros of both signs, infinities, NaN, subnormals, ties), both layouts, in and
out of place, on sizes that split between threads and leave ragged tails; pow2 also on every
float32 of its range. A short training run per mode writes the same metrics.csv either way.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quantizer import QuantSpec, native
from quantizer import functional as F

from ..helpers.commands import REPO
from ..helpers.equality import bit_equal
from ..helpers.quantizer_cases import MODE_OVERRIDES, SPECS, samples, train_metrics

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"kernels not built: {native.status()}")


def both(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x)`` with the kernels and with the PyTorch rules (each on its own copy)."""
    with native.enabled(True):
        fused = fn(x.clone())
    with native.enabled(False):
        reference = fn(x.clone())
    return fused, reference


def inputs(seed: int) -> list[torch.Tensor]:
    """The shared samples plus tensors long enough for several threads, with ragged lengths,
    near-tie values of each grid, and a channels_last activation with zeros (a ReLU output)."""
    g = torch.Generator().manual_seed(seed)
    out = [x for x in samples(seed) if x.dtype == torch.float32]
    out.append(torch.randn(3 * 16384 + 37, generator=g) * 5)
    out.append(torch.randn(2, 7, 61, 67, generator=g).relu().contiguous(memory_format=torch.channels_last))
    grid = torch.arange(-4096, 4096, dtype=torch.float32) / 64  # ties of Q?.5 and Q?.6 grids
    out.append(torch.cat([grid, torch.nextafter(grid, torch.tensor(9.0)), torch.nextafter(grid, torch.tensor(-9.0))]))
    return out



@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("inplace", [False, True])
def test_every_rule_is_bit_equal_with_and_without_the_kernels(spec: QuantSpec, inplace: bool) -> None:
    for x in inputs(3):
        fused, reference = both(lambda t: spec(t, inplace), x)
        assert bit_equal(fused, reference), (spec, x.shape, x.flatten()[:4])
        assert fused.stride() == reference.stride()


def test_the_kernels_run_where_they_apply_and_not_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(native, "pow2", lambda *a: calls.append("pow2") or a[1])
    spec = QuantSpec("fixed", 6, 0, "pow2")
    spec(torch.randn(4, 4))
    assert calls == ["pow2"]
    spec(torch.randn(4, 4, dtype=torch.float64))  # other dtypes, strided views: PyTorch
    spec(torch.randn(4, 6)[:, ::2])
    with native.enabled(False):
        spec(torch.randn(4, 4))
    assert calls == ["pow2"]
    assert native.applies(torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last))


def test_the_results_do_not_depend_on_the_number_of_threads() -> None:
    x = torch.randn(5, 16, 64, 64).contiguous(memory_format=torch.channels_last) * 3
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append([spec(x.clone()) for spec in SPECS])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        assert all(bit_equal(a, b) for a, b in zip(results[0], other, strict=True))


def every_float_of_binade(exponent: int) -> torch.Tensor:
    """All 2^23 positive float32 values ``2^e (1 + m 2^-23)``."""
    bits = torch.arange(2**23, dtype=torch.int32) + ((exponent + 127) << 23)
    return bits.view(torch.float32)


@pytest.mark.parametrize("i_bits,f_bits,min_exponent", [(6, 0, -8), (0, 4, -8), (2, 3, -6)])
def test_pow2_kernel_equals_the_pytorch_rule_on_every_float_of_its_range(
        i_bits: int, f_bits: int, min_exponent: int) -> None:
    """Every positive float32 from 2^(m-2) to 2^(top+1) (and a binade of negatives): each
    exponent's threshold mantissa and its neighbours, the flush and the clamp included."""
    top = int(np.ceil(np.log2(F.pow2_limit(i_bits, f_bits))))
    for exponent in range(min_exponent - 2, top + 2):
        x = every_float_of_binade(exponent)
        fused, reference = both(lambda t: F.fixed_point_pow2(t, i_bits, f_bits, True, min_exponent), x)
        assert torch.equal(fused.view(torch.int32), reference.view(torch.int32)), exponent
    x = -every_float_of_binade(min_exponent + 1)
    fused, reference = both(lambda t: F.fixed_point_pow2(t, i_bits, f_bits, False, min_exponent), x)
    assert torch.equal(fused.view(torch.int32), reference.view(torch.int32))


def test_pow2_plan_thresholds_are_where_log2_rounding_moves_up() -> None:
    plan = native.pow2_plan(F.pow2_limit(6, 0), -8)
    assert plan is not None and plan.thresholds[-1] == 1 << 23
    assert plan.t_min <= 3474675 <= plan.t_max and plan.t_max - plan.t_min < 64
    for k, threshold in enumerate(plan.thresholds[:-1]):
        e = plan.first + k - 127
        below = torch.tensor([(plan.first + k) << 23 | int(threshold) - 1], dtype=torch.int32).view(torch.float32)
        at = torch.tensor([(plan.first + k) << 23 | int(threshold)], dtype=torch.int32).view(torch.float32)
        assert torch.round(torch.log2(below)).item() == e and torch.round(torch.log2(at)).item() == e + 1
    assert native._agrees_with_torch(plan.first, plan.thresholds[:-1])
    shifted = plan.thresholds[:-1].copy()
    shifted[3] += 1
    assert not native._agrees_with_torch(plan.first, shifted)
    assert native.pow2_plan(F.pow2_limit(0, 0), -8) is None  # M = 0
    assert native.pow2_plan(F.pow2_limit(6, 0), -126) is None  # subnormals: the PyTorch rule
    assert native.pow2_plan(F.pow2_limit(0, 1), 2) is None  # M = 0.5 < 2^m


def test_minmax_matches_aminmax_and_reports_nan() -> None:
    for x in inputs(5):
        if not native._dense(x) or x.numel() == 0:
            continue
        found = native.minmax(x)
        if bool(x.isnan().any()):
            assert found is None
        else:
            lo, hi = torch.aminmax(x.reshape(-1))
            assert found == (lo.item(), hi.item())
    assert native.minmax(torch.empty(0)) is None


def test_binary_gradient_mask_and_backward_match_the_pytorch_rules() -> None:
    x = torch.cat([torch.randn(70001) * 2, torch.tensor([-1.0, 1.0, -0.0, 0.0, float("nan"), 1.0000001])])
    grads = []
    for on in (True, False):
        with native.enabled(on):
            leaf = x.clone().requires_grad_(True)
            y = leaf * 1.0
            q = QuantSpec("binary")(y, inplace=True)
            g = torch.linspace(-3, 3, x.numel())
            q.backward(g)
            grads.append((q.detach(), leaf.grad))
    assert bit_equal(grads[0][0], grads[1][0]) and bit_equal(grads[0][1], grads[1][1])


def test_an_in_place_kernel_write_still_stops_a_backward_that_needs_the_old_values() -> None:
    for spec in (QuantSpec("fixed", 6, 0, "pow2"), QuantSpec("int", 8), QuantSpec("binary"), QuantSpec("fixed", 2, 2)):
        leaf = torch.randn(100, requires_grad=True)
        saved = leaf.exp()  # exp keeps its output for the backward
        spec(saved, inplace=True)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            saved.sum().backward()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace is deprecated, still supported
def test_a_traced_quantizer_gives_the_same_values() -> None:
    class Quant(torch.nn.Module):
        def forward(self, x):
            return QuantSpec("fixed", 6, 0, "pow2")(x)

    x = torch.randn(3, 5)
    traced = torch.jit.trace(Quant(), x)
    with native.enabled(False):
        expected = QuantSpec("fixed", 6, 0, "pow2")(x)
    assert bit_equal(traced(x), expected) and bit_equal(traced(x * 3), Quant()(x * 3))


def test_training_runs_are_identical_with_and_without_the_kernels(small_em_data: Path, tmp_path: Path, capsys) -> None:
    for mode, overrides in MODE_OVERRIDES.items():
        if mode in ("normal", "ternary"):
            continue
        overrides = overrides + (["val_bn_mode=eval"] if mode in ("int", "bnn") else [])
        with native.enabled(True):
            fused = train_metrics(small_em_data, tmp_path / f"{mode}-on", overrides)
        with native.enabled(False):
            reference = train_metrics(small_em_data, tmp_path / f"{mode}-off", overrides)
        capsys.readouterr()
        assert len(fused) == 2 and fused == reference, mode


def run_python(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **env}, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_switch_missing_compiler_and_foreign_cache_fall_back_to_pytorch(tmp_path: Path) -> None:
    code = ("from quantizer import native, QuantSpec; import torch; print(native.status()); "
            "QuantSpec('int', 8)(torch.randn(9))")
    assert run_python(code, UNET_NATIVE_KERNELS="0").startswith("off (UNET_NATIVE_KERNELS=0)")
    assert "no C compiler" in run_python(code, CC="", PATH=str(tmp_path))
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # others may write: never load from here
    status = run_python(code, UNET_KERNEL_CACHE=str(shared))
    assert status.startswith("active") and str(shared) not in status
    assert not any(shared.iterdir())
    private = tmp_path / "private"
    status = run_python(code, UNET_KERNEL_CACHE=str(private))
    assert str(private) in status and stat.S_IMODE(private.stat().st_mode) == 0o700
    assert [p.suffix for p in private.iterdir()] == [".so"]  # built atomically: no partial file left
    assert run_python(code, UNET_KERNEL_CACHE=str(private)) == status  # reused, not rebuilt


def test_a_failed_build_is_remembered_and_the_next_build_used(tmp_path: Path) -> None:
    """A compiler without OpenMP: the OpenMP build fails once, is noted, and is not tried again."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "cc-no-openmp"
    real = shutil.which("gcc") or shutil.which("cc")
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n"
                    f"case \"$*\" in *-fopenmp*) echo 'no OpenMP here' >&2; exit 1;; esac\nexec {real} \"$@\"\n")
    fake.chmod(0o755)
    code = "from quantizer import native; print(native.status())"
    cache = tmp_path / "cache"
    first = run_python(code, CC=str(fake), UNET_KERNEL_CACHE=str(cache))
    assert first.startswith("active, one thread")
    second = run_python(code, CC=str(fake), UNET_KERNEL_CACHE=str(cache))
    assert second == first
    builds = [line for line in log.read_text().splitlines() if "-o" in line.split()]
    assert len(builds) == 2 and "-fopenmp" in builds[0] and "-fopenmp" not in builds[1]
    assert "no OpenMP here" in next(cache.glob("*.failed")).read_text()
