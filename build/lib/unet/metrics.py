"""Segmentation metrics per 2-D slice (SPEC §6), then averaged over slices.

Predictions are binarised as ``prob > threshold``. With TP, FP, FN, TN the pixel counts of
a slice, in percent:

* Dice ``2TP / (2TP + FP + FN)``; a slice where truth and prediction are both empty
  scores ``100 * empty_dice`` (the original used 0).
* IoU ``TP / (TP + FP + FN)``; like Dice, ``100 * empty_dice`` when both are empty.
* precision ``TP / (TP + FP)``, recall ``TP / (TP + FN)``, specificity ``TN / (TN + FP)``,
  accuracy ``(TP + TN) / N``; 0 when the denominator is 0.
* Hausdorff: symmetric Hausdorff distance in pixels between the foreground pixel sets
  (equal to scikit-image's ``hausdorff_distance``); 0 when both are empty. When exactly one
  of them is empty the distance is undefined; such a slice scores the image diagonal
  ``sqrt(H^2 + W^2)`` (as some challenges do), so a model that predicts nothing on hard
  slices is not flattered, and is counted in ``hausdorff_one_empty`` (1 on the slice;
  :func:`summarize` reports how many slices).
* ISBI 2012 measures (EM): adapted Rand error of the connected cell regions
  (``skimage.metrics.adapted_rand_error``, background/membrane label 0 ignored in the
  truth) and pixel error ``1 - accuracy``, both as fractions in [0, 1].
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.measure import label
from skimage.metrics import adapted_rand_error

BASE_METRICS = ("dice", "precision", "recall", "specificity", "iou", "accuracy", "hausdorff")
#: Per-slice flag (0 or 1) that :func:`summarize` sums instead of averaging.
COUNTED = ("hausdorff_one_empty",)
ISBI_METRICS = ("rand_error", "pixel_error")


def _ratio(num: float, den: float) -> float:
    return 100.0 * num / den if den > 0 else 0.0


def slice_metrics(
    prob: np.ndarray, truth: np.ndarray, threshold: float, empty_dice: int = 0, isbi: bool = False
) -> dict[str, float]:
    """Metrics of one 2-D slice (module docstring): ``prob`` in [0, 1], ``truth`` binary, same
    (H, W) shape; percentages, Hausdorff in pixels, ``hausdorff_one_empty`` 0 or 1, and with
    ``isbi`` the Rand and pixel errors as fractions."""
    pred = prob > threshold
    gt = truth > 0.5
    tp = float(np.count_nonzero(pred & gt))
    fp = float(np.count_nonzero(pred & ~gt))
    fn = float(np.count_nonzero(~pred & gt))
    tn = float(pred.size) - tp - fp - fn
    both_empty = tp + fp + fn == 0
    one_empty = bool(pred.any()) != bool(gt.any())
    result = {
        "dice": 100.0 * empty_dice if both_empty else _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "iou": 100.0 * empty_dice if both_empty else _ratio(tp, tp + fp + fn),
        "accuracy": _ratio(tp + tn, float(pred.size)),
        "hausdorff": _hausdorff(pred, gt),
        "hausdorff_one_empty": float(one_empty),
    }
    if isbi:
        result["rand_error"] = _adapted_rand_error(pred, gt)
        result["pixel_error"] = (fp + fn) / float(pred.size)
    return result


def _hausdorff(pred: np.ndarray, gt: np.ndarray) -> float:
    """Symmetric Hausdorff distance in pixels; 0 if both masks are empty, the image diagonal
    ``sqrt(H^2 + W^2)`` if exactly one is.

    ``max(max_{p in pred} d(p, gt), max_{g in gt} d(g, pred))`` with ``d(., S)`` the Euclidean
    distance to the nearest pixel of ``S``, read off exact Euclidean distance transforms
    (``sqrt`` of the integer squared distance in float64, as
    ``skimage.metrics.hausdorff_distance`` computes it with k-d trees: the same value, about
    8x faster on a 200x200 slice).
    """
    has_pred, has_gt = pred.any(), gt.any()
    if not has_pred and not has_gt:
        return 0.0
    if has_pred != has_gt:
        return float(np.hypot(*pred.shape))
    to_gt = distance_transform_edt(~gt)
    to_pred = distance_transform_edt(~pred)
    return float(max(to_gt[pred].max(), to_pred[gt].max()))


def _adapted_rand_error(pred: np.ndarray, gt: np.ndarray) -> float:
    truth_labels = label(gt, connectivity=1)
    if truth_labels.max() == 0:
        return 0.0 if not pred.any() else 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        error, _, _ = adapted_rand_error(truth_labels, label(pred, connectivity=1))
    return float(error) if np.isfinite(error) else 1.0


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over slices (NaN entries left out), plus ``dice_std`` and ``n_slices``.

    A metric that is NaN on every slice stays NaN. The per-slice flags in :data:`COUNTED`
    (``hausdorff_one_empty``: slices whose Hausdorff distance is the image diagonal because
    exactly one of prediction and truth is empty) are summed: a count of slices, not a mean.
    """
    if not rows:
        raise ValueError("no slices to summarize")
    out: dict[str, float] = {}
    for name in rows[0]:
        values = np.array([row[name] for row in rows], dtype=float)
        finite = values[~np.isnan(values)]
        if name in COUNTED:
            out[name] = float(finite.sum())
        else:
            out[name] = float(finite.mean()) if finite.size else float("nan")
    out["dice_std"] = float(np.std([row["dice"] for row in rows]))
    out["n_slices"] = float(len(rows))
    return out
