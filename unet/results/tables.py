"""The results table in Markdown and CSV: labels of the formats, the settings and data
sentence, and the note on how memory is counted."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .runs import Result, data_key

#: Metrics shown after Dice, with their table headers (ISBI ones only when a run logged them).
OTHER_METRICS = (("precision", "precision"), ("recall", "recall"), ("specificity", "specificity"),
                 ("iou", "IoU"), ("accuracy", "accuracy"), ("hausdorff", "Hausdorff px"),
                 ("rand_error", "Rand error"), ("pixel_error", "pixel error"))
CSV_FIELDS = (
    "dataset", "group", "experiment", "status", "quantization", "activations", "weights", "quantizer",
    "weight_bits", "activation_bits", "epochs_done", "num_epochs", "best_epoch", "dice", "dice_std",
    "eval_dice", "eval_dice_std",
    "dice_change_points", "dice_change_percent", *(m for m, _ in OTHER_METRICS), "val_loss",
    "base_channels", "params", "weight_memory_mib", "memory_reduction",
    "params_c64", "weight_memory_mib_c64", "memory_reduction_c64", "float_memory_mib_c64", "run_dir",
)



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


def data_name(path: str | Path) -> str | None:
    """The name a preparation gave the data in ``path`` (``prepare.json`` ``name``, from
    ``--name``), None when it recorded none."""
    try:
        info = json.loads((Path(path) / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = info.get("name") if isinstance(info, dict) else None
    return str(name) if name else None


def dataset_labels(groups: dict[str, list[Result]]) -> dict[str, str]:
    """Legend label per group: the configs' ``dataset`` name with the data set's own name when
    all its rows share one prepared data set that has one (``em (nuclei)``), or the folder name
    when two groups share a label."""
    names = {}
    for group, results in groups.items():
        cfgs = [r.cfg for r in results if r.cfg is not None]
        names[group] = str(cfgs[0].dataset) if cfgs else group
        paths = {data_key(r) for r in results if r.cfg is not None}
        if len(paths) == 1 and (own := data_name(paths.pop())):
            names[group] += f" ({own})"
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
                "eval_dice": _logged(best, "eval_dice"), "eval_dice_std": _logged(best, "eval_dice_std"),
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


def _logged(best: dict[str, Any], key: str) -> Any:
    """``best[key]`` when the run logged it (a number), else ``""``."""
    value = best.get(key)
    return "" if value is None or value == "" else value


def deployed_logged(results: Sequence[Result]) -> bool:
    """Whether any run logged the eval-mode Dice of its checkpoints (``eval_dice`` in metrics.csv)."""
    return any(r.best and _logged(r.best, "eval_dice") != "" for r in results)


def markdown_table(results: Sequence[Result]) -> str:
    """The group's table in Markdown (the metrics columns that any run logged). The best val Dice
    is the recipe's validation protocol (the paper's: EM with BatchNorm on batch statistics); the
    deployed Dice, where logged, is the same checkpoint in eval mode with the BatchNorm statistics
    it holds, as predict, export and the integer engine run it."""
    logged = {m for r in results for m, _ in OTHER_METRICS if r.best and r.best.get(m) is not None}
    metrics = [(m, h) for m, h in OTHER_METRICS if m in logged]
    deployed = deployed_logged(results)
    found = data_sets(results)
    data_index = {path: i for i, path in enumerate(found, start=1)} if len(found) > 1 else {}
    header = ["experiment", *(["data"] if data_index else []), "activations / weights", "quantizer", "status",
              "best val Dice (mean ± std)", *(["deployed Dice (eval mode)"] if deployed else []), "epoch",
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
        data = ([f"{data_index.get(data_key(r), '?')}: `{data_key(r)}`"] if r.cfg is not None else ["?"]) \
            if data_index else []
        cells = [f"`{r.experiment.name}`", *data, f"{act} / {weight}", quantizer_label(r), r.status_text, dice]
        if deployed:
            value = _logged(best, "eval_dice") if best else ""
            cells.append(f"{float(value):.2f} ± {float(best['eval_dice_std']):.2f}" if value != "" else "n/a")
        cells += [str(int(best["epoch"])) if best else "", delta]
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
    """``path`` (relative to the working directory when inside it) and what it holds: the
    synthetic stand-in, the public release (only when the preparation recognised it) or the
    data set the preparation named (``prepare.json``, or ``synthetic_release.json``)."""
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
        origin = info.get("origin")
        name = info.get("name") or info.get("dataset") or "prepared data"
        synthetic = origin == "synthetic" or (origin is None and "synthetic" in json.dumps(info.get("source", "")))
        if synthetic:
            kind = "synthetic stand-in"
        elif origin == "isbi2012":
            kind = f"the public {name} release"
        else:
            kind = f"data set '{name}'"
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


def runs_note(results: Sequence[Result]) -> str:
    """Which run each row shows (the experiment's own run folder ``log_output_dir/experiment_name``)
    and the other runs beside it (``--new-run``'s ``<name>-N``, the sweep's ``--force`` leftovers
    ``<name>.old-*``), which no row shows; empty when there are none."""
    listed = [(r, o) for r in results for o in r.other_runs]
    if not listed:
        return ""
    by_experiment: dict[str, list[str]] = {}
    for r, o in listed:
        by_experiment.setdefault(r.experiment.name, []).append(o.describe())
    parts = [f"`{name}`: " + ", ".join(runs) for name, runs in by_experiment.items()]
    return ("Each row is the run in the experiment's own folder (`log_output_dir/experiment_name`). Other runs "
            "beside it, not in the table (pass `-o experiment_name=<folder>` to tabulate one): " + "; ".join(parts)
            + ".")


def data_sets(results: Sequence[Result]) -> dict[str, list[str]]:
    """The data each row was trained on: resolved ``dataset_path`` -> experiment names (rows
    without a config left out), in table order."""
    found: dict[str, list[str]] = {}
    for r in results:
        if r.cfg is not None:
            found.setdefault(data_key(r), []).append(r.experiment.name)
    return found


def data_note(results: Sequence[Result]) -> str:
    """A warning when the rows of one table were trained on different data; empty otherwise."""
    found = data_sets(results)
    if len(found) < 2:
        return ""
    parts = [f"`{path}`: {', '.join(names)}" for path, names in found.items()]
    return (f"**These rows come from {len(found)} different data sets** ({'; '.join(parts)}): their Dice values "
            "are not comparable across data sets, and each Δ Dice is against the full-precision row on the same "
            "data (n/a without one).")


def compact_table(results: Sequence[Result]) -> str:
    """The terminal's table: experiment, formats, status, best Dice (± std) and epoch, the change
    against full precision, weight memory and reduction at the run's width; aligned plain text."""
    deployed = deployed_logged(results)
    rows = [("experiment", "act / weights", "status", "best Dice", "epoch", "Δ vs FP", "MiB", "reduction",
             *(("deployed",) if deployed else ()))]
    for r in results:
        act, weight = formats(r)
        best = r.best
        change = r.change()
        if r.reference is r and best:
            delta = "ref"
        elif change is None:
            delta = "-"
        else:
            delta = f"{change[0]:+.2f}"
        dice = f"{best['dice']:.2f} ± {best['dice_std']:.2f}" if best else "-"
        status = r.status_text if r.status != "invalid" else "invalid config"
        rows.append((r.experiment.name, f"{act} / {weight}", status, dice, str(int(best["epoch"])) if best else "-",
                     delta, f"{r.memory.mib:.3f}" if r.memory else "-",
                     f"{r.memory.reduction:.2f}x" if r.memory else "-",
                     *((f"{float(best['eval_dice']):.2f}" if best and _logged(best, "eval_dice") != "" else "-",)
                       if deployed else ())))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5, 6, 7, 8}
    return "\n".join("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows)
