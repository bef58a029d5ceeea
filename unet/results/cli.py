"""The ``python -m unet.results`` command: read the runs, write the tables and figures."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..exitcodes import ExitCode
from ..fileio import atomic_write_text, check_writable_dir
from .figures import plot_dice_vs_bits, plot_dice_vs_memory, plot_overlays, plot_training_curves, write_weight_grids
from .runs import collect_results
from .tables import (
    compact_table,
    data_note,
    dataset_labels,
    deployed_logged,
    markdown_table,
    memory_note,
    results_csv,
    runs_note,
    settings_sentence,
)

#: The first line of every results.md this command writes.
RESULTS_TITLE = "# Results: Dice against precision and memory"


def _written_by_results(path: Path) -> bool:
    """Whether ``path`` is a results.md / results.csv this command wrote."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline().strip()
    except (OSError, ValueError):
        return False
    return first == RESULTS_TITLE if path.suffix == ".md" else first.startswith("dataset,group,")


def check_results_out(out: Path, overwrite: bool) -> None:
    """UserError unless ``results.md`` / ``results.csv`` may be written in ``out``, before any work.

    ``out`` must be a writable folder. A results file this command wrote earlier is updated (a
    later sweep refreshes its results); any other file of that name (the user's own) is
    replaced only with ``overwrite``.
    """
    check_writable_dir(out, "output folder")
    for name in ("results.md", "results.csv"):
        path = out / name
        if overwrite or not os.path.lexists(path) or (path.is_file() and _written_by_results(path)):
            continue
        raise UserError(f"{path} already exists and was not written by python -m unet.results; pass --overwrite to "
                        "replace it, or choose another --out")


def write_results(folders: Sequence[Path], out: Path | None = None, overrides: Sequence[str] = (),
                  overlays: bool = True, only: Sequence[str] = (), command: str | None = None,
                  weights: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Read the runs under ``folders`` (only the experiments named in ``only`` when given) and
    write the table and figures into ``out`` (default: the first folder).
    Without ``overwrite`` a results file it did not write is refused (:func:`check_results_out`).
    Returns ``{"groups": ..., "files": [...], "notes": [...]}``."""
    out = Path(out) if out is not None else Path(folders[0])
    check_results_out(out, overwrite)
    groups = collect_results(folders, overrides, only)
    files: list[Path] = []
    notes: list[str] = []
    per_group: dict[str, list[Path]] = {group: [] for group in groups}
    for name, plot in (("dice_vs_bits", plot_dice_vs_bits), ("dice_vs_memory", plot_dice_vs_memory)):
        plot(out / f"{name}.png", groups)  # one panel per data set
        files.append(out / f"{name}.png")
        if len(groups) > 1:  # and one figure per data set
            for group in groups:
                plot(out / f"{name}_{group}.png", {group: groups[group]})
                per_group[group].append(out / f"{name}_{group}.png")
    plot_training_curves(out / "training_curves.png", groups)
    files.append(out / "training_curves.png")
    files += [path for paths in per_group.values() for path in paths]
    overlay_files = []
    if overlays:
        for group, results in groups.items():
            path = out / f"overlays_{group}.png"
            notes.append(f"{group}: {plot_overlays(path, group, results)}")
            overlay_files.append(path)
        files += overlay_files
    weight_files = write_weight_grids(out, groups) if weights else []
    files += weight_files

    command = command or "python -m unet.results " + " ".join(str(f) for f in folders)
    labels = dataset_labels(groups)
    md = [RESULTS_TITLE, "",
          f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M')} from the run folders of "
          f"{sum(len(v) for v in groups.values())} experiment(s). Rows in the paper's order; a run without "
          "summary.json is shown as unfinished with its best epoch so far, an experiment without a run as missing.",
          ""]
    for group, results in groups.items():
        md += [f"## {labels[group]} (`{group}/`)", "", settings_sentence(results), ""]
        if data_note(results):
            md += [data_note(results), ""]
        md += [markdown_table(results), ""]
        if runs_note(results):
            md += [runs_note(results), ""]
        if per_group[group]:
            md += ["Figures of this data set alone: " + ", ".join(f"[{p.stem}]({p.name})" for p in per_group[group])
                   + ".", ""]
    if any(deployed_logged(results) for results in groups.values()):
        md += ["Which Dice is which: *best val Dice* is the recipe's validation protocol, the one the paper "
               "reports and the trainer selects best.pt by (EM validates with BatchNorm on each batch's own "
               "statistics, as the original did); *deployed Dice* is the same best.pt in eval mode with the "
               "BatchNorm statistics the checkpoint holds, which is what predict, export and the integer engine "
               "compute.", ""]
    several = (" One panel per data set: Dice values of different data sets are not comparable."
               if len(groups) > 1 else "")
    md += [memory_note(groups), "", "## Figures", "",
           "Points are experiments (best val Dice, error bars the standard deviation over validation slices), "
           "the dotted line the full-precision Dice on the same data, the right axis the change against it, "
           "the dashed line the Pareto front (the best Dice at that memory or less)." + several, "",
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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a results.md / results.csv in the output folder that this command did not write "
                        "(its own earlier ones are always updated)")
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
                                weights=not args.no_weights, overwrite=args.overwrite)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    for group, results in written["groups"].items():
        print(f"\n{group}:\n{compact_table(results)}")
        if runs_note(results):
            print(runs_note(results).replace("`", ""))
    for note in written["notes"]:
        print(f"note: {note}")
    print("\nall columns (precision, recall, IoU, Hausdorff, memory at c=64 ...) in "
          f"{written['files'][0]}; wrote " + ", ".join(str(p) for p in written["files"]))
    return 0

