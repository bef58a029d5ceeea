"""Every figure of the results: Dice against weight bits and memory, training curves,
overlays of each best model on the same validation slices, and weight distributions."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_path
from .runs import Result, data_key
from .tables import data_name, dataset_labels, short_label, weight_bits


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


@dataclass(frozen=True)
class FigurePoint:
    """One experiment as a point of the Dice figures: exactly its results-table row's values."""

    experiment: str
    label: str  # short formats label, e.g. "Q6.0/Q0.4"
    x: float  # weight memory (MiB) or weight bits
    dice: float  # best val Dice, the table's "dice"
    std: float  # its per-slice standard deviation, the table's "dice_std" (the error bar)
    finished: bool
    delta: float | None  # Dice - Dice(full precision on the same data), the table's "dice_change_points"
    reduction: float | None  # memory reduction against float


@dataclass
class FigureSeries:
    """The points of one data set in one results folder (group), in increasing x."""

    group: str
    label: str  # the data set as the legend and titles name it
    data: str  # its dataset_path ("" when unknown)
    points: list[FigurePoint] = field(default_factory=list)
    reference: float | None = None  # the full-precision Dice on this data, None without such a row

    def pareto(self) -> list[FigurePoint]:
        """The points no other point beats: each has a higher Dice than every point of lower or
        equal x before it (the best Dice at that memory or less), in increasing x."""
        front: list[FigurePoint] = []
        for point in sorted(self.points, key=lambda p: (p.x, -p.dice)):
            if not front or point.dice > front[-1].dice:
                if front and point.x == front[-1].x:
                    continue
                front.append(point)
        return front


def figure_series(groups: dict[str, list[Result]], x_of: Callable[[Result], float | None]) -> list[FigureSeries]:
    """What the Dice figures plot: one series per (group, data set), each point a row of the
    results table with a Dice and an x (``x_of``: memory or bits), sorted by x then Dice.
    Experiments of one folder trained on different data (``dataset_path``) are separate series,
    labelled with their data, never one line."""
    labels = dataset_labels(groups)
    out: list[FigureSeries] = []
    for group, results in groups.items():
        by_data: dict[str, FigureSeries] = {}
        for r in results:
            x = x_of(r)
            if r.dice is None or x is None or r.best is None:
                continue
            key = data_key(r)
            series = by_data.setdefault(key, FigureSeries(group, labels[group], key))
            change = r.change()
            series.points.append(FigurePoint(
                r.experiment.name, short_label(r), float(x), float(r.best["dice"]),
                float(r.best.get("dice_std") or 0.0), r.status == "finished",
                None if change is None else float(change[0]),
                r.memory.reduction if r.memory is not None else None))
            if r.reference is not None and r.reference.dice is not None:
                series.reference = float(r.reference.dice)
        if len(by_data) > 1:
            for series in by_data.values():
                series.label = f"{labels[group]}, data {data_name(series.data) or _short_path(series.data)}"
        for series in by_data.values():
            series.points.sort(key=lambda p: (p.x, p.dice))
            out.append(series)
    return out


def _short_path(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else path


def plot_dice_vs_bits(path: Path, groups: dict[str, list[Result]]) -> None:
    """Best val Dice (± per-slice std) against the weights' storage bits
    (``QuantSpec.storage_bits``; float 32): one panel per results folder (data set)."""
    _dice_figure(path, groups, weight_bits, "weight bits per value as stored (float: 32)",
                 "Best val Dice against weight precision", base=2)


def plot_dice_vs_memory(path: Path, groups: dict[str, list[Result]]) -> None:
    """Best val Dice (± per-slice std) against the trained model's weight memory in MiB (log
    scale): one panel per results folder (data set), each point labelled with its formats and
    reduction factor, the full-precision Dice as a reference line, Δ Dice on the right axis and
    the Pareto front (best Dice at that memory or less) as a dashed line in memory order."""
    _dice_figure(path, groups, lambda r: r.memory.mib if r.memory else None,
                 "weight memory of the trained model (MiB, log scale)", "Best val Dice against weight memory",
                 base=10, show_factor=True)


def _dice_figure(path: Path, groups: dict[str, list[Result]], x_of: Callable[[Result], float | None], xlabel: str,
                 title: str, base: int, show_factor: bool = False) -> None:
    plt = _plt()
    series = figure_series(groups, x_of)
    panels = list(dict.fromkeys(s.group for s in series)) or list(groups)[:1] or [""]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels) + 0.6, 5.0), dpi=100, squeeze=False)
    placements = []
    offset = 0
    for ax, group in zip(axes[0], panels, strict=True):
        mine = [s for s in series if s.group == group]
        placements.append((ax, _draw_panel(ax, mine, base, show_factor, offset)))
        offset += max(len(mine), 1)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(f"best val Dice (%, mean ± std over slices){_at_threshold({group: groups.get(group, [])})}",
                      fontsize=9)
        name = mine[0].label.split(", data ")[0] if mine else group
        several = f" ({len(mine)} data sets: compare within one only)" if len(mine) > 1 else ""
        ax.set_title(f"{name}{several}", fontsize=10)
    fig.suptitle(title + ("" if len(panels) == 1 else " (one panel per data set)"), fontsize=11)
    fig.tight_layout()
    for ax, labels in placements:
        place_labels(ax, labels)
    _save(fig, path)


def _draw_panel(ax: Any, series: list[FigureSeries], base: int, show_factor: bool,
                colour_offset: int = 0) -> list[tuple[float, float, str, str, float]]:
    """Draw the series of one panel (colours from ``C<colour_offset>`` on); return the labels to
    place: (x, y, text, colour, error bar half-length)."""
    from matplotlib.ticker import FuncFormatter

    if not series:
        ax.text(0.5, 0.5, "no run has logged an epoch yet", ha="center", va="center", transform=ax.transAxes)
        return []
    labels: list[tuple[float, float, str, str, float]] = []
    xs_all: list[float] = []
    for k, s in enumerate(series, start=colour_offset):
        colour, marker = f"C{k % 10}", MARKERS[k % len(MARKERS)]
        front = s.pareto()
        if len(front) > 1:
            ax.plot([p.x for p in front], [p.dice for p in front], "--", color=colour, alpha=0.35, linewidth=1,
                    label=f"{s.label}: Pareto front" if len(series) > 1 else "Pareto front (best Dice at that "
                    "memory or less)" if show_factor else "Pareto front (best Dice at that width or less)")
        for finished in (True, False):
            pts = [p for p in s.points if p.finished is finished]
            if not pts:
                continue
            ax.errorbar([p.x for p in pts], [p.dice for p in pts], yerr=[p.std for p in pts], fmt=marker,
                        color=colour, markersize=7, capsize=3, elinewidth=1,
                        markerfacecolor=colour if finished else "white",
                        label=(s.label if len(series) > 1 else "best val Dice ± std over slices")
                        + ("" if finished else " (unfinished)"))
        if s.reference is not None:
            ax.axhline(s.reference, color=colour, linestyle=":", linewidth=1,
                       label=f"{s.label + ': ' if len(series) > 1 else ''}full precision, Dice {s.reference:.2f}")
        for p in s.points:
            text = p.label
            if show_factor and p.reduction is not None:
                text += f" ({p.reduction:.1f}x)"
            labels.append((p.x, p.dice, text, colour, p.std))
        xs_all += [p.x for p in s.points]
    ax.set_xscale("log", base=base)
    ticks = _spread(sorted(set(xs_all)))  # the rows' own values, so each point reads off the axis
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(int(t)) if base == 2 else f"{t:.3g}" for t in ticks],
                       rotation=0 if base == 2 else 35, ha="center" if base == 2 else "right")
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlim(min(xs_all) / 1.8, max(xs_all) * 1.8)
    ys = [p.dice + sign * p.std for s in series for p in s.points for sign in (-1, 1)]
    ys += [s.reference for s in series if s.reference is not None]
    lo, hi = min(ys), max(ys)
    pad = max(0.5, 0.25 * (hi - lo))
    ax.set_ylim(max(lo - pad, -1), min(hi + pad, 101))
    references = {s.reference for s in series if s.reference is not None}
    if len(series) == 1 and len(references) == 1:
        ref = references.pop()
        second = ax.secondary_yaxis("right", functions=(lambda y: y - ref, lambda d: d + ref))
        second.set_ylabel("Δ Dice vs full precision (points)", fontsize=9)
        second.tick_params(labelsize=8)
    ax.legend(loc="best", fontsize=7)
    ax.grid(True, alpha=0.3, which="major")
    ax.tick_params(labelsize=8)
    return labels


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Area shared by two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(ax: Any, labels: Sequence[tuple[float, float, str, str] | tuple[float, float, str, str, float]],
                 gap: float = 5.0, marker_radius: float = 6.0, bar_half_width: float = 4.0) -> list[Any]:
    """Label points ``(x, y, text, colour[, error])`` without overlap, deterministically: points
    in order of x then y, each label tried at candidate offsets (right above, right below, left
    above, left below, above, below, then the same 2.5, 4 and 5.5 times as far) and put at the
    first that overlaps no label already placed, no other point's marker, no error bar (``y ±
    error``) and stays inside the axes; when none is free, at the candidate with the least
    overlap. A label moved away from its point gets a thin leader line. Returns the annotations."""
    if not labels:
        return []
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_pixels = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    bounds = (frame.x0, frame.y0, frame.x1, frame.y1)
    centres = [tuple(to_pixels((item[0], item[1]))) for item in labels]
    markers = [(cx - marker_radius, cy - marker_radius, cx + marker_radius, cy + marker_radius) for cx, cy in centres]
    bars = []
    for item, (cx, _) in zip(labels, centres, strict=True):
        error = item[4] if len(item) > 4 else 0.0
        low, high = to_pixels((item[0], item[1] - error))[1], to_pixels((item[0], item[1] + error))[1]
        bars.append((cx - bar_half_width, low - 1, cx + bar_half_width, high + 1))
    placed: list[tuple[float, float, float, float]] = []
    annotations = []
    order = sorted(range(len(labels)), key=lambda i: (centres[i][0], centres[i][1]))
    for i in order:
        x, y, text, colour = labels[i][:4]
        cx, cy = centres[i]
        probe = ax.text(x, y, text, fontsize=7)
        box = probe.get_window_extent(renderer)
        probe.remove()
        w, h = box.width, box.height
        best, best_cost, best_scale = None, None, 1.0
        for scale in (1.0, 2.5, 4.0, 5.5):
            g = gap * scale
            for dx, dy in ((g, g * 0.6), (g, -h - g * 0.6), (-w - g, g * 0.6), (-w - g, -h - g * 0.6),
                           (-w / 2, g + 3), (-w / 2, -h - g - 3)):
                cand = (cx + dx, cy + dy, cx + dx + w, cy + dy + h)
                cost = sum(_overlaps(cand, other) for other in placed)
                cost += sum(_overlaps(cand, m) for j, m in enumerate(markers) if j != i)
                cost += sum(_overlaps(cand, b) for b in bars)
                outside = (max(0.0, bounds[0] - cand[0]) + max(0.0, cand[2] - bounds[2])
                           + max(0.0, bounds[1] - cand[1]) + max(0.0, cand[3] - bounds[3]))
                cost += outside * h * 10
                if best_cost is None or cost < best_cost - 1e-9:
                    best, best_cost, best_scale = (dx, dy, cand), cost, scale
                if cost == 0:
                    break
            if best_cost == 0:
                break
        dx, dy, cand = best
        arrow = None if best_scale == 1.0 else {"arrowstyle": "-", "color": colour, "alpha": 0.5, "linewidth": 0.6,
                                                 "shrinkA": 0, "shrinkB": 4}
        annotations.append(ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset pixels", ha="left",
                                       va="bottom", fontsize=7, color=colour, arrowprops=arrow))
        placed.append(cand)
    return annotations


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
    """The run's best.pt (:meth:`unet.trained.TrainedModel.load`, every model key from the
    checkpoint over the run's config) and the checkpoint state."""
    from ..config import Config
    from ..trained import TrainedModel

    assert result.cfg is not None and result.run_dir is not None
    unset = Config(dict(result.cfg), {})  # no key set by a command: every model key from the checkpoint
    trained = TrainedModel.load(result.run_dir / "best.pt", unset, defaults_source="")
    return trained.model, trained.state


def overlay_samples(result: Result) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], dict[str, float],
                                               float]:
    """Evaluate the run's best.pt on its validation set exactly as the trainer did (same batches
    and BatchNorm mode): the overlay samples (evenly spaced slices, the same for every run on
    the same data), Dice per sample name and the re-evaluated mean Dice."""
    import torch

    from ..train.evaluation import evaluate

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
    layout = overlay_layout([samples for _, samples, _, _ in rows])
    nrows = len(layout)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(1.9 * ncols + 1.0, 6.0), 1.9 * nrows + 0.8), squeeze=False)
    for i, (kind, index) in enumerate(layout):
        r, samples, dice, mean = rows[index]
        for c, (name, image, truth, prob) in enumerate(samples):
            ax = axes[i, c]
            if kind == "image":
                ax.imshow(image, cmap="gray", interpolation="nearest")
                ax.set_title(name, fontsize=7)
            else:
                ax.imshow(overlay_rgb(image, truth > 0.5, prob > r.cfg.threshold), interpolation="nearest")
                ax.set_title(f"{name}: Dice {dice.get(name, float('nan')):.1f}", fontsize=7)
        if kind == "image":
            one_data = sum(k == "image" for k, _ in layout) == 1
            axes[i, 0].set_ylabel("image" if one_data else f"images of\n{r.experiment.name}", fontsize=8)
        else:
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
    same = "the same validation slices" if sum(k == "image" for k, _ in layout) == 1 else \
        "its own validation slices (the image row above it)"
    fig.suptitle(f"{dataset_labels({group: list(results)})[group]}: each experiment's best.pt on {same}\n"
                 f"prediction: probability > {' / '.join(thresholds)}", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    _save(fig, path, palette=(AGREE, MISSED, FALSE_POSITIVE))
    note = f"overlays of {len(rows)} experiment(s)"
    return note + (f"; skipped: {'; '.join(notes)}" if notes else "")


Sample = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # name, image, truth, probability


def overlay_layout(samples: Sequence[Sequence[Sample]]) -> list[tuple[str, int]]:
    """The rows of the overlay grid: ``("image", i)`` shows experiment i's validation images and
    ``("overlay", i)`` its predictions on them. An image row comes first and again before every
    experiment whose slices differ from the image row above it (other data, another crop), so
    each overlay sits under its own images."""
    layout: list[tuple[str, int]] = []
    shown: Sequence[Sample] | None = None
    for i, mine in enumerate(samples):
        same = shown is not None and len(shown) == len(mine) and all(
            a[0] == b[0] and a[1].shape == b[1].shape and np.array_equal(a[1], b[1])
            for a, b in zip(shown, mine, strict=True))
        if not same:
            layout.append(("image", i))
            shown = mine
        layout.append(("overlay", i))
    return layout


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
