"""GM online augmentation (unet.data.augment): alignment, binary masks, determinism.

Its speed is a target of ``benchmarks/bench_data.py``, not a test: wall-clock time on a shared
machine says nothing about the code.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.data.augment import augment_gm, elastic_deform, random_affine
from unet.data.transforms import normalize

THRESHOLD = 0.5


def _blob_image(seed: int = 0, size: int = 200) -> np.ndarray:
    """A smooth image with a few bright blobs (values 0..1)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        r = rng.uniform(0.06, 0.12) * size
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    return np.clip(image, 0, 1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum()) / max(1, int((a | b).sum()))


@pytest.mark.parametrize("fn", [elastic_deform, random_affine, augment_gm])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_and_mask_stay_aligned(fn, seed):
    image = _blob_image(seed)
    mask = (image > THRESHOLD).astype(np.uint8)
    out_image, out_mask = fn(image, mask, np.random.default_rng(seed))
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert _iou(out_image > THRESHOLD, out_mask) > 0.95
    assert out_mask.any()


def test_transforms_move_the_image():
    image = _blob_image(4)
    mask = (image > THRESHOLD).astype(np.uint8)
    for fn in (elastic_deform, random_affine):
        out, _ = fn(image, mask, np.random.default_rng(0))
        assert not np.allclose(out, image)


def test_strong_rotation_keeps_alignment():
    image = _blob_image(5)
    mask = (image > THRESHOLD).astype(np.uint8)
    out_image, out_mask = random_affine(
        image, mask, np.random.default_rng(0), degrees=45, scale=(0.8, 1.2), translate=(0.2, 0.1)
    )
    assert np.array_equal(out_image > THRESHOLD, out_mask.astype(bool))


@pytest.mark.parametrize("fn", [elastic_deform, random_affine, augment_gm])
def test_mask_stays_binary_and_keeps_dtype(fn):
    image = _blob_image(1)
    for dtype in (np.uint8, np.float32):
        mask = (image > THRESHOLD).astype(dtype)
        out_image, out_mask = fn(image, mask, np.random.default_rng(7))
        assert out_image.dtype == np.float32
        assert out_mask.dtype == dtype
        assert set(np.unique(out_mask).tolist()) <= {0, 1}


@pytest.mark.parametrize("fn", [elastic_deform, random_affine, augment_gm])
def test_same_seed_same_output(fn):
    image = _blob_image(2)
    mask = (image > THRESHOLD).astype(np.uint8)
    a = fn(image, mask, np.random.default_rng(123))
    b = fn(image, mask, np.random.default_rng(123))
    c = fn(image, mask, np.random.default_rng(124))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_elastic_probability():
    image = _blob_image(3)
    mask = (image > THRESHOLD).astype(np.uint8)
    # p = 0: only the affine, which uses nearest interpolation: no new grey values appear
    out, _ = augment_gm(image, mask, np.random.default_rng(0), p_elastic=0.0)
    assert set(np.unique(out)) <= set(np.unique(image)) | {0.0}
    # p = 1: the elastic step interpolates linearly, producing new values
    out, _ = augment_gm(image, mask, np.random.default_rng(0), p_elastic=1.0)
    assert not set(np.unique(out)) <= set(np.unique(image)) | {0.0}


@settings(max_examples=25, deadline=None)
@given(value=st.floats(-1e3, 1e3, allow_nan=False), seed=st.integers(0, 2**31 - 1))
def test_constant_slice_normalizes_without_nan(value, seed):
    image = np.full((64, 48), value, np.float32)
    mask = np.zeros((64, 48), np.uint8)
    out, out_mask = augment_gm(image, mask, np.random.default_rng(seed), p_elastic=0.5)
    normed = normalize(out, "instance")
    assert np.all(np.isfinite(normed))
    assert not out_mask.any()


def test_empty_and_full_masks():
    image = _blob_image(6, size=64)
    for mask in (np.zeros((64, 64), np.uint8), np.ones((64, 64), np.uint8)):
        _, out = elastic_deform(image, mask, np.random.default_rng(0))
        assert set(np.unique(out).tolist()) <= {0, 1}
    with pytest.raises(ValueError):
        random_affine(image, np.zeros((64, 63), np.uint8), np.random.default_rng(0))



def test_speed_benchmark_reports_its_targets(tmp_path, capsys):
    """The benchmark that holds the speed targets runs and says whether they hold (no timing asserted)."""
    import importlib.util
    import json

    from ..conftest import REPO

    spec = importlib.util.spec_from_file_location("bench_data", REPO / "benchmarks" / "bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--reps", "2", "--size", "32", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "target random_affine <= 5 ms CPU per call: " in out
    assert "target elastic_deform <= 10 ms CPU per call: " in out
    saved = json.loads((tmp_path / "b.json").read_text())
    assert set(saved["results"]) == {"random_affine", "elastic_deform", "augment_gm"}
    targets = saved["targets_ms_cpu"]
    assert saved["holds"] == {name: saved["results"][name]["cpu_ms"] <= ms for name, ms in targets.items()}
