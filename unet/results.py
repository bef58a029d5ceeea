"""The paper's table from run folders: Dice against precision and memory (``python -m unet.results``).

For the experiments under each FOLDER (``em``, ``gm``, ``nih``) it reads the run folders
(``log_output_dir/experiment_name`` as each config resolves, with the same ``-o`` overrides
the sweep got) and writes, into the output folder (default: the first FOLDER):

* ``results.md`` and ``results.csv``: one row per experiment in the paper's order (full
  precision, FIXED by decreasing weight then activation bits, INT, BNN, Ternary) with the
  formats, best val Dice (mean ± std over slices) and its epoch, the Dice change against the
  full-precision row, the other metrics and the weight memory;
* ``dice_vs_bits.png``, ``dice_vs_memory.png``, ``training_curves.png``, ``overlays.png``
  (the best model of every experiment on the same validation slices) and
  ``weights_<experiment>.png`` (per-layer float and quantized weight distributions).

Weight memory (:func:`model_memory`): the measured size of the model's packed export
(:func:`unet.export.packed.packed_size_bytes`, the file's tensors without its JSON header):
every quantized convolution's weights bit-packed at ``QuantSpec.storage_bits`` (ternary plus one
float32 scale per output channel), the float first block and head, biases and BatchNorm (with
its running statistics) in float32. ``MiB = bytes / 2^20``; the reduction factor is the same
tensors in float32 over the packed size.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, load_config
from .errors import ConfigError, UserError
from .export.packed import float32_size_bytes, packed_size_bytes
from .fileio import atomic_path, atomic_write_text
from .memory import BITS_PER_MIB, weight_memory_bits
from .sweep import Experiment, collect, is_finished
from .sweep import paper_order_key as _paper_key

#: The paper's U-Net width (SPEC §4).
PAPER_BASE_CHANNELS = 64
#: Metrics shown after Dice, with their table headers (ISBI ones only when a run logged them).
OTHER_METRICS = (("precision", "precision"), ("recall", "recall"), ("specificity", "specificity"),
                 ("iou", "IoU"), ("accuracy", "accuracy"), ("hausdorff", "Hausdorff px"),
                 ("rand_error", "Rand error"), ("pixel_error", "pixel error"))
CSV_FIELDS = (
    "dataset", "group", "experiment", "status", "quantization", "activations", "weights", "quantizer",
    "weight_bits", "activation_bits", "epochs_done", "num_epochs", "best_epoch", "dice", "dice_std",
    "dice_change_points", "dice_change_percent", *(m for m, _ in OTHER_METRICS), "val_loss",
    "base_channels", "params", "weight_memory_mib", "memory_reduction",
    "params_c64", "weight_memory_mib_c64", "memory_reduction_c64", "float_memory_mib_c64", "run_dir",
)


# --- memory --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Memory:
    """Parameter count and measured packed size of one model.

    ``bits = 8 * packed_size_bytes(model)`` (the packed export's tensors); ``quantized_bits``
    the quantized weights alone at their storage widths; ``float_bits`` the same tensors in
    float32; ``reduction = float_bits / bits``.
    """

    base_channels: int
    params: int
    bits: int
    quantized_bits: int
    float_bits: int

    @property
    def mib(self) -> float:
        """``bits / 2^23``."""
        return self.bits / BITS_PER_MIB

    @property
    def float_mib(self) -> float:
        """``float_bits / 2^23``."""
        return self.float_bits / BITS_PER_MIB

    @property
    def reduction(self) -> float:
        """``float_bits / bits`` (1.0 for a float model)."""
        return self.float_bits / self.bits


_MEMORY_CACHE: dict[tuple, Memory] = {}


def model_memory(cfg: Config | dict[str, Any], base_channels: int | None = None) -> Memory:
    """The weight memory of the U-Net ``cfg`` describes, at ``base_channels`` (default: the
    config's own): the packed export's size of the real model (to the byte, as written)."""
    from .engine import build_model

    width = int(cfg["base_channels"] if base_channels is None else base_channels)
    keys = ("quantization", "activation_i_width", "activation_f_width", "weight_i_width", "weight_f_width",
            "fixed_rounding", "fixed_overflow", "pow2_min_exponent", "activation", "dropout")
    cache_key = (width, *(cfg[k] for k in keys))
    if cache_key not in _MEMORY_CACHE:
        model = build_model(Config({**cfg, "base_channels": width}, getattr(cfg, "sources", {})))
        _MEMORY_CACHE[cache_key] = Memory(width, sum(p.numel() for p in model.parameters()),
                                          8 * packed_size_bytes(model), weight_memory_bits(model)["quantized"],
                                          8 * float32_size_bytes(model))
    return _MEMORY_CACHE[cache_key]


# --- one row -------------------------------------------------------------------------------


@dataclass
class Result:
    """One experiment's row: where its run is, what it reached, how big its model is."""

    experiment: Experiment
    cfg: Config | None
    status: str  # finished, unfinished, missing, invalid
    status_text: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    memory: Memory | None = None
    memory64: Memory | None = None
    reference: Result | None = None  # the group's full-precision row
    seconds: float | None = None

    @property
    def run_dir(self) -> Path | None:
        """The run folder (None when the config does not load)."""
        return self.experiment.run_dir

    @property
    def dice(self) -> float | None:
        """Best val Dice so far (None without a logged epoch)."""
        return None if self.best is None else float(self.best["dice"])

    @property
    def specs(self) -> tuple[Any, Any] | None:
        """``(weight_quant, act_quant)`` :class:`quantizer.QuantSpec` of the config."""
        if self.cfg is None:
            return None
        from .model import quant_specs

        c = self.cfg
        return quant_specs(c.quantization, c.activation_i_width, c.activation_f_width, c.weight_i_width,
                           c.weight_f_width, c.fixed_rounding, c.fixed_overflow, c.pow2_min_exponent)

    def change(self) -> tuple[float, float] | None:
        """Dice change against the full-precision row: ``(dice - dice_fp, 100 (dice - dice_fp) / dice_fp)``;
        the percentage is NaN when ``dice_fp`` is 0; None when either Dice is unknown."""
        if self.reference is None or self.reference.dice is None or self.dice is None:
            return None
        points = self.dice - self.reference.dice
        percent = 100.0 * points / self.reference.dice if self.reference.dice else float("nan")
        return points, percent


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """A run's ``metrics.csv``, numbers as floats (empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{k: _number(v) for k, v in row.items()} for row in rows]


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def best_row(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> dict[str, Any] | None:
    """The epoch the best checkpoint came from: ``best_epoch`` when given and logged, else the
    first epoch with the highest Dice (the engine replaces best.pt only on a strict improvement)."""
    if not history:
        return None
    if best_epoch is not None:
        for row in history:
            if int(row["epoch"]) == best_epoch:
                return row
    best = history[0]
    for row in history[1:]:
        if float(row["dice"]) > float(best["dice"]):
            best = row
    return best


def read_result(experiment: Experiment) -> Result:
    """Read one experiment's run folder into a :class:`Result` (missing or unfinished runs included)."""
    if experiment.cfg is None:
        return Result(experiment, None, "invalid", f"invalid config: {experiment.config_error}")
    run_dir = experiment.run_dir
    assert run_dir is not None
    cfg = experiment.cfg
    saved = run_dir / "config.yaml"
    if saved.is_file():  # the formats and width the run really used
        try:
            cfg = load_config(experiment.recipe.base_config, saved, "UNET", (), experiment.recipe.extra_keys)
        except ConfigError:
            cfg = experiment.cfg
    history = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    summary: dict[str, Any] = {}
    if is_finished(run_dir):
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
    if summary:
        status, text = "finished", "finished"
    elif history or (run_dir / "last.pt").is_file():
        status, text = "unfinished", f"unfinished (epoch {len(history)} of {cfg.num_epochs})"
    else:
        status, text = "missing", "missing"
    best_epoch = summary.get("best_epoch")
    result = Result(experiment, cfg, status, text, history,
                    best_row(history, int(best_epoch) if best_epoch is not None else None))
    result.memory = model_memory(cfg)
    result.memory64 = model_memory(cfg, PAPER_BASE_CHANNELS)
    seconds = summary.get("total_seconds")
    if seconds is None and history:
        seconds = sum(float(r.get("seconds") or 0) for r in history)
    result.seconds = seconds
    return result


def collect_results(folders: Sequence[Path], overrides: Sequence[str] = (),
                    only: Sequence[str] = ()) -> dict[str, list[Result]]:
    """Results per group (folder name), each in the paper's order, with the full-precision
    reference set on every row; ``only`` keeps the named experiment folders."""
    experiments = collect(folders, overrides, only)
    groups: dict[str, list[Result]] = {}
    for experiment in experiments:
        groups.setdefault(experiment.group, []).append(read_result(experiment))
    for group, results in groups.items():
        results.sort(key=lambda r: _paper_key(r.cfg, r.experiment.name))
        reference = next((r for r in results if r.cfg is not None and r.cfg.quantization == "normal"
                          and r.dice is not None), None)
        for r in results:
            r.reference = reference
        groups[group] = results
    return groups


# --- labels --------------------------------------------------------------------------------


def spec_label(spec: Any) -> str:
    """``Q6.0`` for FIXED, ``INT4``, ``binary``, ``ternary``, ``float``."""
    if spec.kind == "fixed":
        return f"Q{spec.i_bits}.{spec.f_bits}"
    if spec.kind == "int":
        return f"INT{spec.i_bits}"
    return spec.kind


def formats(result: Result) -> tuple[str, str]:
    """(activation format, weight format), e.g. ``("Q6.0", "Q0.4")``; ``("?", "?")`` without a config."""
    specs = result.specs
    if specs is None:
        return "?", "?"
    weight, act = specs
    return spec_label(act), spec_label(weight)


def quantizer_label(result: Result) -> str:
    """The quantizer family and variant: ``FIXED pow2``, ``FIXED nearest/wrap``, ``BNN``, ``Ternary (TWN)``."""
    if result.cfg is None:
        return "?"
    c = result.cfg
    mode = c.quantization
    if mode == "fixed":
        variant = "pow2" if c.fixed_rounding == "pow2" else f"nearest/{c.fixed_overflow}"
        return f"FIXED {variant}"
    return {"normal": "full precision", "int": "INT min-max", "bnn": "BNN", "ternary": "Ternary (TWN)"}.get(mode, mode)


def short_label(result: Result) -> str:
    """Point label in the figures: ``FP``, ``Q6.0/Q0.4``, ``BNN``, ``Ternary``."""
    if result.cfg is None:
        return result.experiment.name
    mode = result.cfg.quantization
    if mode == "normal":
        return "FP"
    if mode == "bnn":
        return "BNN"
    if mode == "ternary":
        return "Ternary"
    act, weight = formats(result)
    return f"{act}/{weight}"


def weight_bits(result: Result) -> int | None:
    """Storage bits of one weight of the quantized convolutions (32 for full precision)."""
    specs = result.specs
    return None if specs is None else specs[0].storage_bits


def dataset_labels(groups: dict[str, list[Result]]) -> dict[str, str]:
    """Legend label per group: the configs' ``dataset`` name, or the folder name when two
    groups share one."""
    names = {}
    for group, results in groups.items():
        cfgs = [r.cfg for r in results if r.cfg is not None]
        names[group] = str(cfgs[0].dataset) if cfgs else group
    counts = {n: list(names.values()).count(n) for n in names.values()}
    return {g: (f"{n} ({g}/)" if counts[n] > 1 else n) for g, n in names.items()}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


# --- table ---------------------------------------------------------------------------------


def table_rows(groups: dict[str, list[Result]]) -> list[dict[str, Any]]:
    """One flat dict per experiment with :data:`CSV_FIELDS` (empty string for unknown values)."""
    labels = dataset_labels(groups)
    rows = []
    for group, results in groups.items():
        for r in results:
            act, weight = formats(r)
            best = r.best or {}
            change = r.change()
            specs = r.specs
            row: dict[str, Any] = {
                "dataset": labels[group], "group": group, "experiment": r.experiment.name, "status": r.status_text,
                "quantization": r.cfg.quantization if r.cfg else "", "activations": act, "weights": weight,
                "quantizer": quantizer_label(r),
                "weight_bits": specs[0].storage_bits if specs else "",
                "activation_bits": specs[1].storage_bits if specs else "",
                "epochs_done": len(r.history) if r.cfg else "", "num_epochs": r.cfg.num_epochs if r.cfg else "",
                "best_epoch": int(best["epoch"]) if best else "",
                "dice": best.get("dice", ""), "dice_std": best.get("dice_std", ""),
                "dice_change_points": change[0] if change else "", "dice_change_percent": change[1] if change else "",
                **{m: (best.get(m) if best.get(m) is not None else "") for m, _ in OTHER_METRICS},
                "val_loss": best.get("val_loss", ""),
                "run_dir": str(r.run_dir) if r.run_dir else "",
            }
            for suffix, mem in (("", r.memory), ("_c64", r.memory64)):
                row[f"weight_memory_mib{suffix}"] = mem.mib if mem else ""
                row[f"memory_reduction{suffix}"] = mem.reduction if mem else ""
            row["base_channels"] = r.memory.base_channels if r.memory else ""
            row["params"] = r.memory.params if r.memory else ""
            row["params_c64"] = r.memory64.params if r.memory64 else ""
            row["float_memory_mib_c64"] = r.memory64.float_mib if r.memory64 else ""
            rows.append(row)
    return rows


def results_csv(groups: dict[str, list[Result]]) -> str:
    """The CSV text: a header of :data:`CSV_FIELDS` and one row per experiment."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS), lineterminator="\n")
    writer.writeheader()
    for row in table_rows(groups):
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def markdown_table(results: Sequence[Result]) -> str:
    """The group's table in Markdown (the metrics columns that any run logged)."""
    logged = {m for r in results for m, _ in OTHER_METRICS if r.best and r.best.get(m) is not None}
    metrics = [(m, h) for m, h in OTHER_METRICS if m in logged]
    header = ["experiment", "activations / weights", "quantizer", "status", "best val Dice (mean ± std)", "epoch",
              "Δ Dice vs full precision", *[h for _, h in metrics], "c",
              "weight memory, this run (MiB)", "reduction", "weight memory at c=64, paper model (MiB)", "reduction"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        act, weight = formats(r)
        best = r.best
        dice = f"{best['dice']:.2f} ± {best['dice_std']:.2f}" if best else r.status_text
        if best and r.status != "finished":
            dice += " (so far)"
        change = r.change()
        if r.reference is r and best:
            delta = "reference"
        elif change is None:
            delta = "n/a" if best else ""
        else:
            pct = "n/a" if math.isnan(change[1]) else f"{change[1]:+.2f}%"
            delta = f"{change[0]:+.2f} pts ({pct})"
        cells = [f"`{r.experiment.name}`", f"{act} / {weight}", quantizer_label(r), r.status_text, dice,
                 str(int(best["epoch"])) if best else "", delta]
        for m, _ in metrics:
            digits = 4 if m in ("rand_error", "pixel_error") else 2
            cells.append(_fmt(best.get(m), digits) if best else "")
        cells.append(str(r.memory.base_channels) if r.memory else "")
        for mem in (r.memory, r.memory64):
            cells += [f"{mem.mib:.3f}", f"{mem.reduction:.2f}x"] if mem else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


SETTING_KEYS = ("num_epochs", "base_channels", "lr", "lr_scheduler", "loss", "threshold", "activation",
                "fixed_rounding", "batch_size", "seed")


def settings_sentence(results: Sequence[Result]) -> str:
    """Which data and settings produced the rows: a key shared by all rows once, a key that
    differs per experiment."""
    ran = [r for r in results if r.cfg is not None and r.status != "missing"] or \
          [r for r in results if r.cfg is not None]
    if not ran:
        return "No experiment config could be read."
    parts = []
    for key in SETTING_KEYS:
        by_value: dict[str, list[str]] = {}
        for r in ran:
            by_value.setdefault(str(r.cfg[key]), []).append(r.experiment.name)
        ranked = sorted(by_value.items(), key=lambda item: -len(item[1]))
        text = f"{key} {ranked[0][0]}"
        if len(ranked) > 1:  # the most common value, then the exceptions by experiment
            text += " (" + "; ".join(f"{v} for {', '.join(names)}" for v, names in ranked[1:]) + ")"
        parts.append(text)
    paths = sorted({str(r.cfg.dataset_path) for r in ran})
    data = "; ".join(describe_data(Path(p)) for p in paths)
    seconds = [r.seconds for r in results if r.seconds]
    timing = f" Training time: {sum(seconds) / 60:.1f} min over {len(seconds)} run(s)." if seconds else ""
    return f"Data: {data}. Settings: {'; '.join(parts)}.{timing}"


def describe_data(path: Path) -> str:
    """``path`` (relative to the working directory when inside it), and whether it is the
    synthetic stand-in (read from the preparation's ``prepare.json`` or ``synthetic_release.json``)."""
    try:
        shown = os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        shown = str(path)
    prepare = Path(path) / "prepare.json"
    kind = "unknown origin"
    if (Path(path) / "synthetic_release.json").is_file():
        kind = "synthetic stand-in (preprocessing/*_prepare.py --synthetic)"
    elif prepare.is_file():
        try:
            info = json.loads(prepare.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
        synthetic = "synthetic" in json.dumps(info.get("source", ""))
        kind = "synthetic stand-in" if synthetic else f"public data ({info.get('dataset', 'prepared')})"
        pairs = info.get("pairs") or info.get("slices")
        if isinstance(pairs, dict) and {"train", "val"} <= set(pairs):
            kind += f", {pairs['train']} train / {pairs['val']} val slices"
        if info.get("augment_copies"):
            kind += f", {info['augment_copies']} augmented copies per training slice"
    elif Path(path).is_dir():
        kind = "public release or user data"
    else:
        kind = "not found"
    return f"`{shown}` ({kind})"


def memory_note(groups: dict[str, list[Result]]) -> str:
    """How the memory columns are counted, with the headline numbers when a Q6.0 / Q0.4 row is present."""
    note = ("Weight memory is the measured size of the model's packed export (`python -m unet.export RUN`, "
            "the file's tensors without its JSON header): the quantized convolutions' weights bit-packed at their "
            "storage width (FIXED nearest saturate 1 + i + f bits, wrap 2 + i + f when f > 0, pow2 sign + exponent "
            "index, INT i + 1, BNN 1, ternary 2 plus a float32 scale per output channel) and the float first "
            "block, 1-channel head, biases and BatchNorm (with running statistics) in float32; MiB = bytes / 2^20; "
            "reduction = the same tensors in float32 / the packed size. `c` is the width the run "
            "used; the c=64 columns are the paper's model in the same format. Δ Dice = Dice − Dice(full "
            "precision) in points, and 100 (Dice − Dice_FP) / Dice_FP in percent.")
    for results in groups.values():
        for r in results:
            if formats(r) == ("Q6.0", "Q0.4") and r.memory64 is not None and r.specs is not None:
                m, bits = r.memory64, r.specs[0].storage_bits
                return note + (
                    f" Headline Q6.0 / Q0.4 ({quantizer_label(r)}) at c=64: {m.mib:.2f} MiB against "
                    f"{m.float_mib:.2f} MiB in float, {m.reduction:.2f}x smaller. The paper's 8x compares 4-bit "
                    f"weights with 32-bit floats; stored, a Q0.4 weight here takes {bits} bits "
                    f"(32/{bits} = {32 / bits:.1f}x for those weights), and the float first and last layers, "
                    f"biases and BatchNorm bring the whole model to {m.reduction:.2f}x.")
    return note


# --- figures -------------------------------------------------------------------------------


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
                   "Accuracy against weight memory", base=10, show_factor=True)


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
        if base == 2:
            ticks = sorted(set(xs_all))
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(int(t)) for t in ticks])
        else:
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
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
    ax.set_ylabel("best val Dice (%)", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, path)


def plot_training_curves(path: Path, groups: dict[str, list[Result]]) -> None:
    """Val Dice, training loss and validation loss per epoch, one line per experiment."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    several = len(groups) > 1
    styles = ("-", "--", ":", "-.")
    drawn = 0
    for k, (group, results) in enumerate(groups.items()):
        for j, r in enumerate(results):
            if not r.history:
                continue
            epochs = [int(h["epoch"]) for h in r.history]
            label = f"{group}/{r.experiment.name}" if several else r.experiment.name
            label += f" ({short_label(r)})"
            for ax, key in zip(axes, ("dice", "train_loss", "val_loss"), strict=True):
                values = [h.get(key) if h.get(key) is not None else np.nan for h in r.history]
                ax.plot(epochs, values, styles[k % len(styles)], color=f"C{j % 10}", marker="." if
                        len(epochs) < 30 else None, label=label)
            drawn += 1
    for ax, name in zip(axes, ("val Dice (%)", "training loss", "validation loss"), strict=True):
        ax.set_xlabel("epoch", fontsize=9)
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if drawn:
        axes[0].legend(fontsize=7, loc="best")
    else:
        axes[0].text(0.5, 0.5, "no run has logged an epoch yet", ha="center", va="center",
                     transform=axes[0].transAxes)
    fig.tight_layout()
    _save(fig, path)


def _load_best_model(result: Result):
    import torch

    from .checkpoint import load_checkpoint, load_model_state
    from .engine import build_model

    assert result.cfg is not None and result.run_dir is not None
    path = result.run_dir / "best.pt"
    state = load_checkpoint(path)
    model = build_model(result.cfg)
    load_model_state(model, state["model"], path)
    return model.to(torch.device("cpu")), state


def overlay_samples(result: Result) -> tuple[list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], dict[str, float],
                                               float]:
    """Evaluate the run's best.pt on its validation set exactly as the trainer did (same batches
    and BatchNorm mode): the overlay samples (evenly spaced slices, the same for every run on
    the same data), Dice per sample name and the re-evaluated mean Dice."""
    import torch

    from .engine import evaluate

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

    from .errors import DataError
    from .plots import AGREE, FALSE_POSITIVE, MISSED, overlay_rgb

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
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols + 1.0, 1.9 * nrows + 0.6), squeeze=False)
    for c, (name, image, _truth, _prob) in enumerate(rows[0][1]):
        axes[0, c].imshow(image, cmap="gray", interpolation="nearest")
        axes[0, c].set_title(name, fontsize=7)
    axes[0, 0].set_ylabel("image", fontsize=8)
    for i, (r, samples, dice, mean) in enumerate(rows, start=1):
        for c, (name, image, truth, prob) in enumerate(samples):
            ax = axes[i, c]
            ax.imshow(overlay_rgb(image, truth > 0.5, prob > r.cfg.threshold), interpolation="nearest")
            ax.set_title(f"{name}: Dice {dice.get(name, float('nan')):.1f}", fontsize=6)
        axes[i, 0].set_ylabel(f"{r.experiment.name}\n{short_label(r)}\nmean Dice {mean:.1f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    fig.legend(handles=[Patch(color=AGREE, label="agree"), Patch(color=MISSED, label="missed (truth only)"),
                        Patch(color=FALSE_POSITIVE, label="false positive (prediction only)")],
               loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(f"{group}: each experiment's best.pt on the same validation slices", fontsize=9)
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
    from .plots import save_weight_histograms

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


# --- the command ---------------------------------------------------------------------------


def write_results(folders: Sequence[Path], out: Path | None = None, overrides: Sequence[str] = (),
                  overlays: bool = True, only: Sequence[str] = (), command: str | None = None,
                  weights: bool = True) -> dict[str, Any]:
    """Read the runs under ``folders`` (only the experiments named in ``only`` when given) and
    write the table and figures into ``out`` (default: the first folder).
    Returns ``{"groups": ..., "files": [...], "notes": [...]}``."""
    groups = collect_results(folders, overrides, only)
    out = Path(out) if out is not None else Path(folders[0])
    out.mkdir(parents=True, exist_ok=True)
    several = len(groups) > 1
    files: list[Path] = []
    notes: list[str] = []
    for name, plot in (("dice_vs_bits.png", plot_dice_vs_bits), ("dice_vs_memory.png", plot_dice_vs_memory),
                       ("training_curves.png", plot_training_curves)):
        plot(out / name, groups)
        files.append(out / name)
    overlay_files = []
    if overlays:
        for group, results in groups.items():
            path = out / (f"overlays_{group}.png" if several else "overlays.png")
            notes.append(f"{group}: {plot_overlays(path, group, results)}")
            overlay_files.append(path)
        files += overlay_files
    weight_files = write_weight_grids(out, groups) if weights else []
    files += weight_files

    command = command or "python -m unet.results " + " ".join(str(f) for f in folders)
    labels = dataset_labels(groups)
    md = ["# Results: Dice against precision and memory", "",
          f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} from the run folders of "
          f"{sum(len(v) for v in groups.values())} experiment(s). Rows in the paper's order; a run without "
          "summary.json is shown as unfinished with its best epoch so far, an experiment without a run as missing.",
          ""]
    for group, results in groups.items():
        md += [f"## {labels[group]} (`{group}/`)", "", settings_sentence(results), "", markdown_table(results), ""]
    md += [memory_note(groups), "", "## Figures", "",
           "![Dice against weight memory](dice_vs_memory.png)", "", "![Dice against weight bits](dice_vs_bits.png)",
           "", "![Training curves](training_curves.png)", ""]
    for path in overlay_files:
        md += [f"![Overlays: orange agree, red missed, blue false positive]({path.name})", ""]
    if notes:
        md += ["Overlays: " + "; ".join(notes) + ".", ""]
    if weight_files:
        md += ["Weight distributions (float against quantized levels, per layer): " +
               ", ".join(f"[{p.stem.removeprefix('weights_')}]({p.name})" for p in weight_files) + ".", ""]
    atomic_write_text(out / "results.md", "\n".join(md))
    atomic_write_text(out / "results.csv", results_csv(groups))
    files = [out / "results.md", out / "results.csv", *files]
    return {"groups": groups, "files": files, "notes": notes}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m unet.results`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m unet.results",
        description="Write results.md, results.csv and figures (Dice against weight bits and memory, training "
        "curves, overlays, weight distributions) from the run folders of the experiments under FOLDER.",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER", help="folder(s) of experiments, e.g. em")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the first FOLDER)")
    parser.add_argument("--no-overlays", action="store_true",
                        help="skip the overlay figure (it evaluates every best.pt on the validation set)")
    parser.add_argument("--no-weights", action="store_true", help="skip the weights_<experiment>.png grids")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="only these experiment folders (by name), as given to the sweep")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="the overrides the runs were made with, as given to the sweep (only those that "
                        "move the run folder matter: log_output_dir, experiment_name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Write the results; print the tables and the files written. Errors: one line, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        argv = sys.argv[1:] if argv is None else argv
        written = write_results(args.folders, args.out, args.override, overlays=not args.no_overlays,
                                only=args.only, command="python -m unet.results " + shlex.join(argv),
                                weights=not args.no_weights)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for group, results in written["groups"].items():
        print(f"\n{group}:\n{markdown_table(results)}")
    for note in written["notes"]:
        print(f"note: {note}")
    print("\nwrote " + ", ".join(str(p) for p in written["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
