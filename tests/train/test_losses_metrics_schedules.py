"""Losses, metrics and schedules against hand-computed values (SPEC §5, §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet.losses import bce_dice_loss, bce_dice_original_loss, dice_loss, soft_dice
from unet.memory import BITS_PER_MIB, weight_memory_bits
from unet.metrics import _hausdorff, slice_metrics, summarize
from unet.model import UNet, quant_specs
from unet.schedules import make_lr_scheduler, multistep_milestones, ternary_beta

from ..helpers.metrics import hausdorff_by_scikit_image


def test_soft_dice_and_losses() -> None:
    p = torch.tensor([0.9, 0.2, 0.6, 0.0])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    dice = (2 * 1.5 + 1e-4) / (1.7 + 2 + 1e-4)
    assert soft_dice(p, y).item() == pytest.approx(dice)
    assert dice_loss(p, y).item() == pytest.approx(-dice)
    bce = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(1.0)])
    assert bce_dice_loss(p, y).item() == pytest.approx(0.5 * bce + 0.5 * (1 - dice), rel=1e-5)
    s = 1 / (1 + np.exp(-p.numpy()))  # the original's double sigmoid
    bce_logits = -np.mean(y.numpy() * np.log(s) + (1 - y.numpy()) * np.log(1 - s))
    assert bce_dice_original_loss(p, y).item() == pytest.approx(0.5 * bce_logits + 0.5 * (1 - dice), rel=1e-5)


def test_slice_metrics_by_hand() -> None:
    truth = np.zeros((10, 10))
    truth[2:6, 2:6] = 1  # 16 pixels
    prob = np.zeros((10, 10))
    prob[3:7, 2:6] = 0.9995  # 16 pixels, 12 overlap
    prob[0, 0] = 0.9  # below the threshold
    m = slice_metrics(prob, truth, threshold=0.999)
    tp, fp, fn, tn = 12, 4, 4, 80
    assert m["dice"] == pytest.approx(100 * 2 * tp / (2 * tp + fp + fn))
    assert m["precision"] == pytest.approx(100 * tp / (tp + fp))
    assert m["recall"] == pytest.approx(100 * tp / (tp + fn))
    assert m["specificity"] == pytest.approx(100 * tn / (tn + fp))
    assert m["iou"] == pytest.approx(100 * tp / (tp + fp + fn))
    assert m["accuracy"] == pytest.approx(100 * (tp + tn) / 100)
    assert m["hausdorff"] == pytest.approx(1.0)  # one row shifted


def test_hausdorff_is_geometric_not_row_based() -> None:
    truth = np.zeros((20, 20))
    truth[5, 5] = 1
    prob = np.zeros((20, 20))
    prob[5, 5] = prob[8, 9] = 1.0  # an extra point 5 pixels away (3-4-5 triangle)
    assert slice_metrics(prob, truth, 0.5)["hausdorff"] == pytest.approx(5.0)


# --- Hausdorff from distance transforms equals scikit-image's --------------------------------------------------------


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
        assert _hausdorff(pred, gt) == hausdorff_by_scikit_image(pred, gt), (pred.shape, pred.sum(), gt.sum())
    ring = np.ones((21, 21), bool)
    ring[5:16, 5:16] = False
    square = np.ones((21, 21), bool)
    # attained at the square's centre, inside the ring's hole: not at a boundary pixel of the square
    assert _hausdorff(square, ring) == hausdorff_by_scikit_image(square, ring) == 6.0


def test_empty_slices() -> None:
    empty = np.zeros((8, 8))
    for empty_dice in (0, 1):  # IoU follows Dice's rule when both are empty
        both = slice_metrics(empty, empty, 0.5, empty_dice=empty_dice)
        assert both["dice"] == both["iou"] == 100.0 * empty_dice
        assert both["hausdorff"] == 0.0 and both["hausdorff_one_empty"] == 0.0
    only_truth = empty.copy()
    only_truth[1, 1] = 1
    m = slice_metrics(empty, only_truth, 0.5, empty_dice=1)  # the model predicts nothing on it
    assert m["dice"] == 0.0 and m["iou"] == 0.0 and m["precision"] == 0.0
    assert m["hausdorff"] == pytest.approx(math.sqrt(8**2 + 8**2)) and m["hausdorff_one_empty"] == 1.0


def test_a_slice_with_one_empty_mask_counts_as_the_image_diagonal() -> None:
    """Hand-made 6 x 8 masks: the missed slice costs sqrt(6^2 + 8^2) = 10 pixels, not nothing."""
    truth = np.zeros((6, 8))
    truth[1, 1] = 1
    hit = truth.copy()
    shifted = np.zeros((6, 8))
    shifted[1, 4] = 1  # 3 pixels to the right
    rows = [
        slice_metrics(hit, truth, 0.5),  # 0
        slice_metrics(shifted, truth, 0.5),  # 3
        slice_metrics(np.zeros((6, 8)), truth, 0.5),  # prediction empty: 10
        slice_metrics(truth, np.zeros((6, 8)), 0.5),  # truth empty: 10
        slice_metrics(np.zeros((6, 8)), np.zeros((6, 8)), 0.5, empty_dice=1),  # both empty: 0
    ]
    assert [r["hausdorff"] for r in rows] == [0.0, 3.0, 10.0, 10.0, 0.0]
    assert [r["hausdorff_one_empty"] for r in rows] == [0.0, 0.0, 1.0, 1.0, 0.0]
    summary = summarize(rows)
    assert summary["hausdorff"] == pytest.approx(23.0 / 5)  # every slice in the mean
    assert summary["hausdorff_one_empty"] == 2.0  # a count of slices, not a mean
    assert summary["iou"] == pytest.approx((100 + 0 + 0 + 0 + 100) / 5)
    assert summary["dice"] == 40.0 and summary["dice_std"] == pytest.approx(np.std([100, 0, 0, 0, 100]))
    assert summary["n_slices"] == 5
    assert summarize(rows[:2])["hausdorff_one_empty"] == 0.0


def test_isbi_measures() -> None:
    truth = np.ones((12, 12))
    truth[:, 6] = 0  # a membrane splitting two cells
    perfect = slice_metrics(truth, truth, 0.5, isbi=True)
    assert perfect["rand_error"] == pytest.approx(0.0) and perfect["pixel_error"] == 0.0
    merged = slice_metrics(np.ones((12, 12)), truth, 0.5, isbi=True)  # membrane missed: cells merged
    assert merged["rand_error"] > 0.3
    assert merged["pixel_error"] == pytest.approx(12 / 144)


@pytest.mark.parametrize(
    ("n", "milestones"),
    [(200, [40, 80, 120, 160]), (10, [2, 4, 6, 8]), (12, [2, 4, 6, 8, 10]), (4, []), (1, [])],
)
def test_multistep_milestones(n: int, milestones: list[int]) -> None:
    assert multistep_milestones(n) == milestones


def test_lr_schedules_per_epoch() -> None:
    def lrs(name: str, n: int) -> list[float]:
        opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = make_lr_scheduler(opt, name, n)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("multistep", 10) == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4])
    cosine = [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert lrs("cosine", 4) == pytest.approx(cosine)
    assert lrs("constant", 3) == [1, 1, 1]


def test_beta_schedule() -> None:
    assert ternary_beta(1, 11) == 3.0 and ternary_beta(11, 11) == 8.0 and ternary_beta(6, 11) == 5.5
    assert ternary_beta(1, 1) == 3.0


def test_weight_memory_of_the_headline_model() -> None:
    """Q0.4 weights (nearest, wrap): 6 bits each in the 12 quantized convs (the fraction can round
    up to 1.0, code 16); the rest at 32 bits."""
    model = UNet(64, *quant_specs("FIXED", 6, 0, 0, 4))
    quantized_weights = sum(c.weight.numel() for c in model.quantized_convs())
    total = 4_837_249
    bits = weight_memory_bits(model)
    assert bits["quantized"] == quantized_weights * 6
    assert bits["float"] == (total - quantized_weights) * 32
    assert weight_memory_bits(UNet(64))["total"] == total * 32
    assert bits["total"] / BITS_PER_MIB < total * 32 / BITS_PER_MIB / 5
