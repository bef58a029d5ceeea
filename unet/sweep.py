"""Run every experiment under one or more folders, one after the other (``python -m unet.sweep``).

An experiment folder holds a ``config.yaml`` and a ``*_unet.py`` link to its trainer (SPEC §1).
Each one runs as a subprocess from its own folder, exactly as a user would run it::

    python <trainer> -f config.yaml -t UNET -o key=value ...

Its run folder is ``log_output_dir/experiment_name`` as the config resolves it (the trainer's
base config, then the experiment's, then the ``-o`` overrides). A run folder holding
``summary.json`` is finished and skipped unless ``--force`` (then the old folder is renamed to
``<name>.old-<timestamp>`` first); one holding an interrupted run is resumed
(``-o operation_mode=resume``). A failed experiment is reported with its last error line and
the sweep goes on; the exit status is 1 when any failed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .errors import UserError
from .experiments import (
    Experiment,
    absolute_overrides,
    collect,
    holds_partial_run,
    is_finished,
    paper_order_key,
)
from .progress import bar_disable, switch_off

#: How a sweep names the old run folder it moves aside with ``--force``.
OLD_SUFFIX = ".old-"
#: Exit status when at least one experiment failed.
EXIT_FAILED = 1
#: Exit status of a sweep stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
_EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*?dice ([\d.]+|nan)")


@dataclass
class Outcome:
    """What happened to one experiment in a sweep."""

    experiment: Experiment
    status: str  # finished, skipped, failed, interrupted
    seconds: float = 0.0
    message: str = ""
    best_dice: float | None = None
    notes: list[str] = field(default_factory=list)


# --- running -------------------------------------------------------------------------------


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``<name>.old-<YYYYmmdd-HHMMSS>`` (a free name); return the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}{OLD_SUFFIX}{stamp}")
    n = 2
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}{OLD_SUFFIX}{stamp}-{n}")
        n += 1
    os.replace(run_dir, target)
    return target


def trainer_command(experiment: Experiment, overrides: Sequence[str]) -> list[str]:
    """``python <trainer> -f config.yaml -t UNET -o ...``, run from the experiment folder."""
    command = [sys.executable, experiment.trainer.name, "-f", "config.yaml", "-t", "UNET"]
    for text in overrides:
        command += ["-o", text]
    return command


def last_error_line(stdout_lines: Sequence[str], stderr_text: str) -> str:
    """The line that best explains a failure: the last ``error: ...`` line of either stream,
    else the last non-blank stderr line (a traceback's exception), else the last stdout line."""
    stderr_lines = [s.strip() for s in re.split(r"[\r\n]+", stderr_text) if s.strip()]
    stderr_lines = [s for s in stderr_lines if "%|" not in s]  # progress bars
    stdout_lines = [s.strip() for s in stdout_lines if s.strip()]
    for line in reversed(stderr_lines + stdout_lines):
        if line.startswith("error:"):
            return line
    if stderr_lines:
        return stderr_lines[-1]
    return stdout_lines[-1] if stdout_lines else "(no output)"


def run_experiment(experiment: Experiment, overrides: Sequence[str], bar: tqdm, quiet: bool = False) -> Outcome:
    """Run one trainer subprocess; stream its log lines above ``bar`` and return the outcome."""
    command = trainer_command(experiment, overrides)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        process = subprocess.Popen(command, cwd=experiment.folder, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True, encoding="utf-8", errors="replace", env=env)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                match = _EPOCH_LINE.match(line)
                if match:
                    bar.set_postfix_str(f"{experiment.label} epoch {match[1]}/{match[2]} dice {match[3]}")
                if not quiet:
                    tqdm.write(f"[{experiment.label}] {line}", file=sys.stdout)
            code = process.wait()
        except KeyboardInterrupt:
            # The trainer got the same SIGINT: let it save last.pt and stop.
            code = process.wait()
            stderr.seek(0)
            return Outcome(experiment, "interrupted", time.perf_counter() - started,
                           f"interrupted (exit {code}); run the sweep again to resume it")
        stderr.seek(0)
        err = stderr.read()
    seconds = time.perf_counter() - started
    if code == 0:
        return Outcome(experiment, "finished", seconds, "", _best_dice(experiment.run_dir))
    status = "interrupted" if code == EXIT_INTERRUPTED else "failed"
    return Outcome(experiment, status, seconds, f"exit {code}: {last_error_line(lines, err)}")


def _best_dice(run_dir: Path | None) -> float | None:
    import json

    if run_dir is None or not (run_dir / "summary.json").is_file():
        return None
    try:
        return float(json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["best_dice"])
    except (ValueError, KeyError, OSError):
        return None


def sweep(
    folders: Sequence[Path],
    overrides: Sequence[str] = (),
    force: bool = False,
    only: Sequence[str] = (),
    quiet: bool = False,
) -> list[Outcome]:
    """Run the experiments under ``folders`` in the paper's order (see :func:`paper_order_key`).

    Finished runs are skipped unless ``force`` (the old run folder is moved aside); interrupted
    runs are resumed; failures are recorded and the sweep continues. Ctrl-C stops the sweep
    after the running trainer has saved its state.
    """
    experiments = _group_then_paper_order(collect(folders, overrides, only))
    print(f"sweep: {len(experiments)} experiment(s) in the paper's order: "
          f"{', '.join(e.label for e in experiments)}" + (f"; overrides: {' '.join(overrides)}" if overrides else ""),
          flush=True)
    outcomes: list[Outcome] = []
    bar = tqdm(experiments, desc="sweep", unit="experiment", file=sys.stderr, dynamic_ncols=True,
               disable=bar_disable())
    for experiment in bar:
        bar.set_postfix_str(experiment.label)
        run_dir = experiment.run_dir
        extra: list[str] = []
        notes: list[str] = []
        if is_finished(run_dir) and not force:
            outcome = Outcome(experiment, "skipped", message=f"finished run in {run_dir} (--force to re-run)",
                              best_dice=_best_dice(run_dir))
            tqdm.write(f"[{experiment.label}] skipped: {outcome.message}", file=sys.stdout)
            outcomes.append(outcome)
            continue
        if run_dir is not None and run_dir.exists() and force and any(run_dir.iterdir()):
            moved = move_aside(run_dir)
            notes.append(f"moved the old run folder aside to {moved}")
            tqdm.write(f"[{experiment.label}] --force: moved {run_dir} aside to {moved.name}", file=sys.stdout)
        elif holds_partial_run(run_dir):
            extra = ["operation_mode=resume"]
            notes.append("resumed an interrupted run")
            tqdm.write(f"[{experiment.label}] resuming the interrupted run in {run_dir}", file=sys.stdout)
        outcome = run_experiment(experiment, [*absolute_overrides(overrides, experiment.recipe), *extra], bar,
                                 quiet)
        outcome.notes = notes
        if extra and outcome.status == "failed":
            outcome.message += " (pass --force to start it again instead of resuming)"
        outcomes.append(outcome)
        if outcome.status == "failed":
            tqdm.write(f"[{experiment.label}] FAILED ({outcome.message}); going on", file=sys.stdout)
        if outcome.status == "interrupted":
            bar.close()
            break
    bar.close()
    return outcomes


def _group_then_paper_order(experiments: list[Experiment]) -> list[Experiment]:
    """Keep the folders in the order given; inside each, the paper's order."""
    groups: list[str] = []
    for e in experiments:
        if e.group not in groups:
            groups.append(e.group)
    return sorted(experiments, key=lambda e: (groups.index(e.group), paper_order_key(e.cfg, e.name)))


def format_summary(outcomes: Sequence[Outcome]) -> str:
    """A plain-text table: experiment, status, time, best Dice, run folder or message."""
    rows = [("experiment", "status", "time", "best Dice", "run folder / message")]
    for o in outcomes:
        dice = f"{o.best_dice:.2f}" if o.best_dice is not None else "-"
        where = o.message if o.status in ("failed", "interrupted") else str(o.experiment.run_dir)
        if o.notes:
            where += f" ({'; '.join(o.notes)})"
        rows.append((o.experiment.label, o.status, _duration(o.seconds), dice, where))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m unet.sweep`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m unet.sweep",
        description="Run every experiment under FOLDER (e.g. em/) one after the other through its trainer, "
        "in the paper's order. Finished runs (summary.json present) are skipped, interrupted runs resumed, "
        "failed ones reported while the sweep goes on.",
    )
    parser.add_argument("folders", nargs="+", type=Path, metavar="FOLDER",
                        help="folder(s) of experiment folders, e.g. em gm nih")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every experiment (repeatable), e.g. -o num_epochs=1")
    parser.add_argument("--force", action="store_true",
                        help="re-run finished experiments; the old run folder is renamed <name>.old-<timestamp>")
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME",
                        help="run only these experiment folders (by name, e.g. full_precision a6.0_w0.4)")
    parser.add_argument("--results", action="store_true",
                        help="then write results.md, results.csv and the figures (python -m unet.results with "
                        "the same FOLDERs, --only and -o)")
    parser.add_argument("--out", type=Path, default=None,
                        help="with --results: output folder (default: the first FOLDER)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the trainers' log lines")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars, here or in the trainers (they show only on a terminal anyway; "
                        "also UNET_NO_PROGRESS=1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Sweep, print the summary table, optionally write the results; return the exit status."""
    args = build_parser().parse_args(argv)
    if args.no_progress:
        switch_off()  # the trainers inherit it
    try:
        outcomes = sweep(args.folders, args.override, args.force, args.only, args.quiet)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sweep interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n" + format_summary(outcomes))
    failed = [o for o in outcomes if o.status == "failed"]
    interrupted = any(o.status == "interrupted" for o in outcomes)
    if failed:
        print(f"{len(failed)} of {len(outcomes)} experiment(s) failed: {', '.join(o.experiment.label for o in failed)}")
    if args.results and not interrupted:
        from . import results

        code = results.main([*map(str, args.folders), *(["--out", str(args.out)] if args.out else []),
                             *(["--only", *args.only] if args.only else []),
                             *[a for o in args.override for a in ("-o", o)]])
        if code:
            return code
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main())
