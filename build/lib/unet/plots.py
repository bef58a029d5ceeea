"""Figures written into run folders: prediction overlays and weight distributions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .fileio import atomic_path  # noqa: E402

AGREE = (1.0, 0.55, 0.0)  # orange: prediction and truth agree on foreground
MISSED = (0.9, 0.0, 0.0)  # red: truth only
FALSE_POSITIVE = (0.1, 0.35, 1.0)  # blue: prediction only


def overlay_rgb(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """An (H, W, 3) RGB overlay in [0, 1] as in the original's Figs/.

    The grey image (min-max scaled) is shown where neither mask is set; orange where truth
    and prediction agree on foreground, red where only the truth is set (missed), blue
    where only the prediction is set (false positive). ``truth``/``pred`` are boolean.
    """
    image = np.asarray(image, dtype=np.float32)
    span = float(image.max() - image.min())
    grey = (image - image.min()) / span if span > 0 else np.zeros_like(image)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for region, colour in (
        (truth & pred, AGREE),
        (truth & ~pred, MISSED),
        (~truth & pred, FALSE_POSITIVE),
    ):
        rgb[region] = colour
    return rgb


def save_overlay_figure(
    path: Path,
    samples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    threshold: float,
    title: str,
) -> None:
    """Save one row per sample ``(name, image, truth, prob)``: the image and its overlay.

    The prediction is ``prob > threshold`` (stated under ``title``); each overlay is titled with
    the slice's Dice.
    """
    rows = len(samples)
    fig, axes = plt.subplots(rows, 2, figsize=(6.4, 3 * rows + 0.4), squeeze=False)
    for row, (name, image, truth, prob) in enumerate(samples):
        gt = truth > 0.5
        pred = prob > threshold
        inter = np.count_nonzero(gt & pred)
        total = np.count_nonzero(gt) + np.count_nonzero(pred)
        dice = 100.0 * 2 * inter / total if total else float("nan")
        axes[row, 0].imshow(image, cmap="gray", interpolation="nearest")
        axes[row, 0].set_title(f"{name}: image", fontsize=8)
        axes[row, 1].imshow(overlay_rgb(image, gt, pred), interpolation="nearest")
        axes[row, 1].set_title(f"{name}: prediction vs truth, Dice {dice:.1f}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.legend(
        handles=[
            Patch(color=AGREE, label="agree"),
            Patch(color=MISSED, label="missed (truth only)"),
            Patch(color=FALSE_POSITIVE, label="false positive (prediction only)"),
        ],
        loc="lower center",
        ncol=3,
        fontsize=8,
    )
    fig.suptitle(f"{title}\nprediction: probability > {threshold:g}", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    _save(fig, path)


def save_weight_histograms(path: Path, model: torch.nn.Module, title: str) -> None:
    """One panel per convolution: a histogram of its float weights (grey, count per bin on the
    left axis) and, for quantized convolutions, the count of each quantized value the convolution
    uses (orange bars on the right axis; a step histogram when there are more than 64 values).
    x: weight value; panels titled with the layer name and its format."""
    from matplotlib.lines import Line2D

    from quantizer import QuantConv2d

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    cols = 4
    rows = -(-len(convs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows + 0.8), squeeze=False)
    for index, (ax, (name, conv)) in enumerate(zip(axes.flat, convs, strict=False)):
        weight = conv.weight.detach().flatten().cpu().numpy()
        ax.hist(weight, bins=60, color="0.6")
        spec = getattr(conv, "weight_quant", None)
        if isinstance(conv, QuantConv2d) and spec is not None and spec.kind != "float":
            with torch.no_grad():
                quantized = conv.quantized_weight().flatten().cpu().numpy()
            levels, counts = np.unique(quantized, return_counts=True)
            ax2 = ax.twinx()
            if len(levels) <= 64:
                lo, hi = min(weight.min(), levels.min()), max(weight.max(), levels.max())
                ax2.bar(levels, counts, width=(hi - lo + 1e-12) / 80, color="tab:orange", alpha=0.85)
            else:
                ax2.hist(quantized, bins=60, histtype="step", color="tab:orange", linewidth=1.2)
            ax2.tick_params(axis="y", labelsize=8, colors="tab:orange")
            if index % cols == cols - 1 or index == len(convs) - 1:
                ax2.set_ylabel("count (quantized)", fontsize=8, color="tab:orange")
            ax.set_title(f"{name}  [{spec}]", fontsize=8)
        else:
            ax.set_title(f"{name}  [float, not quantized]", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_xlabel("weight value", fontsize=8)
        if index % cols == 0:
            ax.set_ylabel("count (float)", fontsize=8)
    for ax in list(axes.flat)[len(convs):]:
        ax.axis("off")
    fig.legend(handles=[Patch(color="0.6", label="float weights (the trained parameters)"),
                        Line2D([], [], color="tab:orange", linewidth=6,
                               label="quantized values the convolution uses (right axis)")],
               loc="lower center", ncol=2, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
