"""Every figure of the results: Dice against weight bits and memory, training curves,
overlays of each best model on the same validation slices, and weight distributions."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path
from .runs import Result
from .tables import dataset_labels, short_label, weight_bits


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int = 100, palette: Sequence[tuple[float, float, float]] = ()) -> None:
    """Save ``fig`` as PNG atomically. With ``palette`` the PNG is stored with 8-bit indexed
    colours: 64 grey levels plus the given colours exactly (overlays: several times smaller)."""
    plt = _plt()
    with atomic_path(path) as tmp:
        if palette:
            from PIL import Image

            buffer = io.BytesIO()
            fig.savefig(buffer, dpi=dpi, format="png")
            buffer.seek(0)
            colours = [(g, g, g) for g in np.linspace(0, 255, 64).round().astype(int).tolist()]
            colours += [tuple(int(round(255 * v)) for v in c) for c in palette]
            table = Image.new("P", (1, 1))
            table.putpalette([v for c in colours for v in c] + [0, 0, 0] * (256 - len(colours)))
            with Image.open(buffer) as image:
                indexed = image.convert("RGB").quantize(palette=table, dither=Image.Dither.NONE)
                indexed.save(tmp, format="PNG", optimize=True)
        else:
            fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_dice_vs_bits(path: Path, groups: dict[str, list[Result]]) -> None:
    """Best val Dice against the weights' storage bits (``QuantSpec.storage_bits``; float 32),
    one line per dataset; hollow markers are unfinished runs."""
    _scatter_lines(path, groups, lambda r: weight_bits(r), "weight bits per value as stored (QuantSpec.storage_bits; "
                   "float 32)", "Best val Dice against weight precision", base=2)


def plot_dice_vs_memory(path: Path, groups: dict[str, list[Result]]) -> None:
    """Best val Dice against the trained model's weight memory in MiB (log scale), one line per
    dataset, each point labelled with its formats and reduction factor."""
    _scatter_lines(path, groups, lambda r: r.memory.mib if r.memory else None,
                   "weight memory of the trained model (MiB, log scale)",
                   "Best val Dice against weight memory (label: formats, reduction vs float)", base=10,
                   show_factor=True)


def _scatter_lines(path: Path, groups: dict[str, list[Result]], x_of, xlabel: str, title: str, base: int,
                   show_factor: bool = False) -> None:
    from matplotlib.ticker import FuncFormatter

    plt = _plt()
    labels = dataset_labels(groups)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs_all: list[float] = []
    for k, (group, results) in enumerate(groups.items()):
        points = [(x_of(r), r) for r in results if r.dice is not None and x_of(r) is not None]
        points.sort(key=lambda p: -p[0])
        if not points:
            continue
        xs = [p[0] for p in points]
        ys = [p[1].dice for p in points]
        xs_all += xs
        colour = f"C{k}"
        ax.plot(xs, ys, "-", color=colour, alpha=0.6, marker=MARKERS[k % len(MARKERS)], markersize=7,
                label=labels[group])
        for x, r in points:
            filled = r.status == "finished"
            ax.plot([x], [r.dice], MARKERS[k % len(MARKERS)], color=colour, markersize=7,
                    markerfacecolor=colour if filled else "white")
            text = short_label(r)
            if show_factor and r.memory is not None:
                text += f" ({r.memory.reduction:.1f}x)"
            ax.annotate(text, (x, r.dice), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
    if xs_all:
        ax.set_xscale("log", base=base)
        ticks = _spread(sorted(set(xs_all)))  # the rows' own values, so each point reads off the axis
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(int(t)) if base == 2 else f"{t:.3g}" for t in ticks],
                           rotation=0 if base == 2 else 35, ha="center" if base == 2 else "right")
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        lo, hi = min(xs_all), max(xs_all)
        ax.set_xlim(lo / 1.5, hi * 1.5)
        y_lo, y_hi = ax.get_ylim()
        if y_hi - y_lo < 2:  # all rows (nearly) equal: show a readable Dice range
            ax.set_ylim(max(y_lo - 5, -1), min(y_hi + 5, 101))
        ax.legend(loc="best", fontsize=8, title="dataset (hollow: unfinished)", title_fontsize=7)
    else:
        ax.text(0.5, 0.5, "no run has logged an epoch yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(f"best val Dice (%){_at_threshold(groups)}", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3, which="major")
    fig.tight_layout()
    _save(fig, path)


def _at_threshold(groups: dict[str, list[Result]]) -> str:
    """``", threshold 0.999"`` when every run with a config shares one threshold, else ``""``."""
    values = {r.cfg.threshold for results in groups.values() for r in results if r.cfg is not None}
    return f", threshold {values.pop():g}" if len(values) == 1 else ""


def _spread(values: list[float], min_ratio: float = 1.12) -> list[float]:
    """``values`` (sorted) without those closer than ``min_ratio`` to the previous kept one, so
    tick labels on a log axis do not overlap."""
    kept: list[float] = []
    for v in values:
        if not kept or v >= kept[-1] * min_ratio:
            kept.append(v)
    return kept


def plot_training_curves(path: Path, groups: dict[str, list[Result]]) -> None:
    """Val Dice, training loss and validation loss per epoch: one row of panels per dataset
    (folder), one line per experiment; an experiment keeps its colour in every row."""
    plt = _plt()
    labels = dataset_labels(groups)
    drawn_groups = [(g, rs) for g, rs in groups.items() if any(r.history for r in rs)] or list(groups.items())[:1]
    names = list(dict.fromkeys(r.experiment.name for _, rs in drawn_groups for r in rs if r.history))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    nrows = max(len(drawn_groups), 1)
    fig, axes = plt.subplots(nrows, 3, figsize=(15, 3.9 * nrows + 0.3), squeeze=False)
    for row, (group, results) in enumerate(drawn_groups):
        drawn = 0
        for r in results:
            if not r.history:
                continue
            epochs = [int(h["epoch"]) for h in r.history]
            label = f"{r.experiment.name} ({short_label(r)})"
            for ax, key in zip(axes[row], ("dice", "train_loss", "val_loss"), strict=True):
                values = [h.get(key) if h.get(key) is not None else np.nan for h in r.history]
                ax.plot(epochs, values, "-", color=colour[r.experiment.name],
                        marker="." if len(epochs) < 30 else None, label=label)
            drawn += 1
        dice_title = f"val Dice (%){_at_threshold({group: results})}"
        for ax, name in zip(axes[row], (dice_title, "training loss", "validation loss"), strict=True):
            ax.set_xlabel("epoch", fontsize=9)
            ax.set_title(f"{labels.get(group, group)}: {name}", fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if drawn:
            axes[row, 0].legend(fontsize=7, loc="best", title="experiment (formats)", title_fontsize=7)
        else:
            axes[row, 0].text(0.5, 0.5, "no run has logged an epoch yet", ha="center", va="center",
                              transform=axes[row, 0].transAxes)
    fig.tight_layout()
    _save(fig, path)


def _load_best_model(result: Result):
    import torch

    from ..checkpoint import load_checkpoint, load_model_state
    from ..config import Config
    from ..engine import build_model
    from ..modelkeys import checkpoint_model_config

    assert result.cfg is not None and result.run_dir is not None
    path = result.run_dir / "best.pt"
    state = load_checkpoint(path)
    unset = Config(dict(result.cfg), {})  # every model key from the checkpoint
    model = build_model(checkpoint_model_config(unset, state, path, ""))
    load_model_state(model, state["model"], path)
    return model.to(torch.device("cpu")), state


def overlay_samples(result: Result) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], dict[str, float],
                                               float]:
    """Evaluate the run's best.pt on its validation set exactly as the trainer did (same batches
    and BatchNorm mode): the overlay samples (evenly spaced slices, the same for every run on
    the same data), Dice per sample name and the re-evaluated mean Dice."""
    import torch

    from ..engine import evaluate

    model, _ = _load_best_model(result)
    val_set = result.experiment.recipe.build_val(result.cfg)
    summary, rows, samples = evaluate(model, val_set, result.cfg, torch.device("cpu"),
                                      result.experiment.recipe.isbi_metrics, desc=f"overlay {result.experiment.name}")
    dice = {row["name"]: float(row["dice"]) for row in rows}
    return samples, dice, float(summary["dice"])


def plot_overlays(path: Path, group: str, results: Sequence[Result]) -> str:
    """One row per experiment with a best.pt, one column per validation slice: the overlay of
    its prediction (orange agree, red missed, blue false positive). Returns a note."""
    from matplotlib.patches import Patch

    from ..errors import DataError
    from ..plots import AGREE, FALSE_POSITIVE, MISSED, overlay_rgb

    plt = _plt()
    rows = []
    notes = []
    for r in results:
        if r.cfg is None or r.run_dir is None or not (r.run_dir / "best.pt").is_file():
            continue
        try:
            samples, dice, mean = overlay_samples(r)
        except DataError as exc:
            notes.append(f"{r.experiment.name}: {exc}")
            continue
        rows.append((r, samples, dice, mean))
    if not rows:
        note = "no overlays: no experiment has a best.pt" if not notes else "no overlays: " + "; ".join(notes)
        _text_figure(path, f"{group}: {note}")
        return note
    ncols = max(len(s) for _, s, _, _ in rows)
    nrows = len(rows) + 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(1.9 * ncols + 1.0, 6.0), 1.9 * nrows + 0.8), squeeze=False)
    for c, (name, image, _truth, _prob) in enumerate(rows[0][1]):
        axes[0, c].imshow(image, cmap="gray", interpolation="nearest")
        axes[0, c].set_title(name, fontsize=7)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for i, (r, samples, dice, mean) in enumerate(rows, start=1):
        for c, (name, image, truth, prob) in enumerate(samples):
            ax = axes[i, c]
            ax.imshow(overlay_rgb(image, truth > 0.5, prob > r.cfg.threshold), interpolation="nearest")
            ax.set_title(f"{name}: Dice {dice.get(name, float('nan')):.1f}", fontsize=7)
        axes[i, 0].set_ylabel(f"{r.experiment.name}\n{short_label(r)}\nmean Dice {mean:.1f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.legend(handles=[Patch(color=AGREE, label="agree"), Patch(color=MISSED, label="missed (truth only)"),
                        Patch(color=FALSE_POSITIVE, label="false positive (prediction only)")],
               loc="lower center", ncol=3, fontsize=8)
    thresholds = sorted({f"{r.cfg.threshold:g}" for r, _, _, _ in rows})
    fig.suptitle(f"{group}: each experiment's best.pt on the same validation slices\n"
                 f"prediction: probability > {' / '.join(thresholds)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    _save(fig, path, palette=(AGREE, MISSED, FALSE_POSITIVE))
    note = f"overlays of {len(rows)} experiment(s)"
    return note + (f"; skipped: {'; '.join(notes)}" if notes else "")


def _text_figure(path: Path, text: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, wrap=True)
    ax.axis("off")
    _save(fig, path)


def write_weight_grids(out: Path, groups: dict[str, list[Result]]) -> list[Path]:
    """``weights_<experiment>.png`` (``weights_<group>_<experiment>.png`` for several folders)
    for every experiment with a best.pt, via :func:`unet.plots.save_weight_histograms`."""
    from ..plots import save_weight_histograms

    written = []
    for group, results in groups.items():
        for r in results:
            if r.cfg is None or r.run_dir is None or not (r.run_dir / "best.pt").is_file():
                continue
            model, state = _load_best_model(r)
            path = out / f"weights_{_tag(group, r, len(groups) > 1)}.png"
            save_weight_histograms(path, model, f"{group}/{r.experiment.name} best.pt (epoch "
                                                f"{state.get('epoch', '?')}, {short_label(r)})")
            written.append(path)
    return written


def _tag(group: str, result: Result, several: bool) -> str:
    return f"{group}_{result.experiment.name}" if several else result.experiment.name
