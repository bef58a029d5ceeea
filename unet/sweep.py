"""Run every experiment under one or more folders, one after the other (``python -m unet.sweep``).

An experiment folder holds a ``config.yaml`` and a ``*_unet.py`` link to its trainer (SPEC §1).
Each one runs as a subprocess from its own folder, exactly as a user would run it::

    python <trainer> -f config.yaml -t UNET -o key=value ...

Its run folder is ``log_output_dir/experiment_name`` as the config resolves it (the trainer's
base config, then the experiment's, then the ``-o`` overrides). A run folder holding
``summary.json`` is finished and skipped unless ``--force`` (then the old folder is renamed to
``<name>.old-<timestamp>`` first); one holding an interrupted run is resumed
(``-o operation_mode=resume``). A failed experiment is reported with its last error line and
the sweep goes on; the exit status is 1 when any failed. What a finished run reached (best Dice,
epochs) is read from its run folder (``summary.json``, ``metrics.csv``), not from the trainer's output.

One loop runs them whatever the launcher (:class:`unet.launchers.Launcher`): by default one after
the other here; ``--jobs N`` runs up to N at once, each pinned to its own GPU (or its share of the
CPU threads); ``--launcher slurm`` submits each one as its own Slurm job (:mod:`unet.launchers`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from quantizer.options import StringOption

from .config import Mode
from .errors import UserError
from .exitcodes import ExitCode
from .experiments import (
    Experiment,
    absolute_overrides,
    collect,
    holds_partial_run,
    is_finished,
    paper_order_key,
)
from .launchers import Handle, Launcher, LaunchFailed, LocalLauncher, Slot, local_slots
from .progress import bar_disable, progress_off, switch_off

#: How a sweep names the old run folder it moves aside with ``--force``.
OLD_SUFFIX = ".old-"
#: Exit status when at least one experiment failed.
EXIT_FAILED = ExitCode.PARTIAL
#: Exit status of a sweep stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
#: A trainer's epoch line, read only for the serial sweep's progress bar (the outcome comes from the run folder).
_EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*?dice ([\d.]+|nan)")


class Status(StringOption):
    """What happened to one experiment in a sweep (a ``str``: compares equal to its value)."""

    FINISHED = "finished"
    SKIPPED = "skipped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    SUBMITTED = "submitted"


@dataclass
class Outcome:
    """What happened to one experiment in a sweep; ``best_dice`` and ``epochs`` are read from its
    run folder (``summary.json``, ``metrics.csv``)."""

    experiment: Experiment
    status: Status
    seconds: float = 0.0
    message: str = ""
    best_dice: float | None = None
    notes: list[str] = field(default_factory=list)
    epochs: int | None = None


# --- the run folder ------------------------------------------------------------------------


def _best_dice(run_dir: Path | None) -> float | None:
    """``best_dice`` of the run folder's ``summary.json`` (None without a finished run)."""
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return None
    try:
        return float(json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["best_dice"])
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _epochs(run_dir: Path | None) -> int | None:
    """The last epoch the run folder's ``metrics.csv`` records (None without one)."""
    if run_dir is None or not (run_dir / "metrics.csv").is_file():
        return None
    try:
        with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
            epochs = [int(row["epoch"]) for row in csv.DictReader(handle) if (row.get("epoch") or "").isdigit()]
    except (OSError, KeyError, ValueError, csv.Error):
        return None
    return max(epochs) if epochs else None


def from_run_folder(experiment: Experiment, status: Status, seconds: float = 0.0, message: str = "") -> Outcome:
    """An outcome with what the experiment's run folder says: best Dice and epochs run."""
    return Outcome(experiment, status, seconds, message, _best_dice(experiment.run_dir),
                   epochs=_epochs(experiment.run_dir))


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


def ended(experiment: Experiment, handle: Handle, seconds: float) -> Outcome:
    """The outcome of a trainer that ended: its exit status says finished, interrupted or failed
    (with its error line); a finished one's figures come from its run folder."""
    try:
        result = handle.result()
    except LaunchFailed as exc:
        return Outcome(experiment, Status.FAILED, seconds, str(exc))
    if result.code == 0:
        return from_run_folder(experiment, Status.FINISHED, seconds)
    status = Status.INTERRUPTED if result.code == EXIT_INTERRUPTED else Status.FAILED
    return Outcome(experiment, status, seconds, f"exit {result.code}: {last_error_line(result.stdout, result.stderr)}",
                   epochs=_epochs(experiment.run_dir))


def make_launcher(jobs: int = 1, quiet: bool = False, bar: tqdm | None = None) -> LocalLauncher:
    """The local launcher of ``--jobs``: one slot echoing the trainers' lines (unless ``quiet``)
    with their epoch on ``bar``, or up to ``jobs`` slots (:func:`unet.launchers.local_slots`)."""
    if jobs <= 1:
        def on_line(label: str, line: str) -> None:
            match = _EPOCH_LINE.match(line)
            if match and bar is not None:
                bar.set_postfix_str(f"{label} epoch {match[1]}/{match[2]} dice {match[3]}")

        return LocalLauncher([Slot("here")], echo=not quiet, on_line=on_line)
    slots = local_slots(jobs)
    if len(slots) < jobs:
        print(f"sweep: --jobs {jobs} but {len(slots)} GPU(s): running {len(slots)} at once, one per GPU", flush=True)
    return LocalLauncher(slots)


def sweep(
    folders: Sequence[Path],
    overrides: Sequence[str] = (),
    force: bool = False,
    only: Sequence[str] = (),
    quiet: bool = False,
    jobs: int = 1,
    launcher: Launcher | None = None,
    wait_for_jobs: bool = True,
) -> list[Outcome]:
    """Run the experiments under ``folders`` in the paper's order (see :func:`paper_order_key`).

    Finished runs are skipped unless ``force`` (the old run folder is moved aside); interrupted
    runs are resumed; failures are recorded and the sweep continues. Ctrl-C stops the sweep
    after the running trainers have saved their state. ``launcher`` runs the trainers
    (:class:`unet.launchers.Launcher`; default: :func:`make_launcher` of ``jobs`` and ``quiet``);
    a detached one (Slurm jobs) is not waited for when ``wait_for_jobs`` is false.
    """
    experiments = _group_then_paper_order(collect(folders, overrides, only))
    print(f"sweep: {len(experiments)} experiment(s) in the paper's order: "
          f"{', '.join(e.label for e in experiments)}" + (f"; overrides: {' '.join(overrides)}" if overrides else ""),
          flush=True)
    serial = launcher is None and jobs <= 1
    bar = tqdm(total=len(experiments), desc="sweep", unit="experiment", file=sys.stderr, dynamic_ncols=True,
               disable=bar_disable() if serial else progress_off())
    launcher = launcher or make_launcher(jobs, quiet, bar)
    try:
        outcomes = _run_all(experiments, overrides, force, launcher, bar, wait_for_jobs)
    finally:
        bar.close()
        launcher.close()
    order = {e.label: i for i, e in enumerate(experiments)}
    return sorted(outcomes, key=lambda o: order[o.experiment.label])


def _run_all(experiments: list[Experiment], overrides: Sequence[str], force: bool, launcher: Launcher, bar: tqdm,
             wait_for_jobs: bool) -> list[Outcome]:
    """The sweep's one loop: start experiments while ``launcher`` has room, collect the ones that ended."""
    pending = list(experiments)
    running: dict[str, tuple[Experiment, Handle, str, list[str], float]] = {}
    outcomes: list[Outcome] = []
    stopping = False
    try:
        while running or (pending and not stopping):
            while pending and not stopping and (launcher.capacity is None or len(running) < launcher.capacity):
                experiment = pending.pop(0)
                ready = prepare(experiment, overrides, force)
                if isinstance(ready, Outcome):
                    outcomes.append(ready)
                    bar.update(1)
                    continue
                extra, notes = ready
                handle, where = launcher.start(experiment.label, trainer_command(experiment, extra), experiment.folder)
                if launcher.announces:
                    verb = "submitted as" if launcher.detached else "started"
                    tqdm.write(f"[{experiment.label}] {verb} {where}" if launcher.detached
                               else f"[{experiment.label}] {verb} ({where})", file=sys.stdout)
                running[experiment.label] = (experiment, handle, where, notes, time.perf_counter())
                bar.set_postfix_str(", ".join(running))
            if launcher.detached and not wait_for_jobs:
                for experiment, _, where, notes, _ in running.values():
                    outcomes.append(Outcome(experiment, Status.SUBMITTED, message=where, notes=notes))
                return outcomes
            finished = [label for label, (_, handle, *_rest) in running.items() if handle.done()]
            if not finished:
                time.sleep(0.2)
            for label in finished:
                experiment, handle, _, notes, started = running.pop(label)
                outcome = ended(experiment, handle, time.perf_counter() - started)
                _record(outcome, notes, outcomes)
                if launcher.announces and outcome.status != Status.FAILED:
                    tqdm.write(_finished_line(outcome), file=sys.stdout)
                stopping = stopping or outcome.status == Status.INTERRUPTED
                bar.update(1)
                if running:
                    bar.set_postfix_str(", ".join(running))
    except KeyboardInterrupt:
        bar.close()
        if launcher.detached:
            ids = " ".join(where.removeprefix("job ") for _, _, where, _, _ in running.values())
            print(f"sweep: stopped waiting; the jobs keep running (cancel them with: scancel {ids}); run the sweep "
                  "again to collect them", file=sys.stderr)
            for experiment, _, where, notes, _ in running.values():
                outcomes.append(Outcome(experiment, Status.INTERRUPTED, message=f"{where} still running", notes=notes))
            return outcomes
        # The trainers got the same SIGINT: let them save last.pt and stop.
        for experiment, handle, _, notes, started in running.values():
            code = _exit_code(handle)
            outcome = Outcome(experiment, Status.INTERRUPTED, time.perf_counter() - started,
                              f"interrupted (exit {code}); run the sweep again to resume it",
                              epochs=_epochs(experiment.run_dir))
            _record(outcome, notes, outcomes)
    return outcomes


def _exit_code(handle: Handle) -> int | str:
    """The exit status of a trainer stopped by Ctrl-C, waiting for it to save and end."""
    try:
        return handle.result().code
    except LaunchFailed:
        return "?"


def prepare(experiment: Experiment, overrides: Sequence[str], force: bool) -> Outcome | tuple[list[str], list[str]]:
    """Get ``experiment`` ready to run: a ``skipped`` Outcome for a finished run (without
    ``force``), else the trainer's ``-o`` overrides (``operation_mode=resume`` for an interrupted
    run) and notes; with ``force`` an old run folder is moved aside first."""
    run_dir = experiment.run_dir
    extra: list[str] = []
    notes: list[str] = []
    if is_finished(run_dir) and not force:
        outcome = from_run_folder(experiment, Status.SKIPPED, message=f"finished run in {run_dir} (--force to re-run)")
        tqdm.write(f"[{experiment.label}] skipped: {outcome.message}", file=sys.stdout)
        return outcome
    if run_dir is not None and run_dir.exists() and force and any(run_dir.iterdir()):
        moved = move_aside(run_dir)
        notes.append(f"moved the old run folder aside to {moved}")
        tqdm.write(f"[{experiment.label}] --force: moved {run_dir} aside to {moved.name}", file=sys.stdout)
    elif holds_partial_run(run_dir):
        extra = [f"operation_mode={Mode.RESUME.value}"]
        notes.append("resumed an interrupted run")
        tqdm.write(f"[{experiment.label}] resuming the interrupted run in {run_dir}", file=sys.stdout)
    return [*absolute_overrides(overrides, experiment.recipe), *extra], notes


def _record(outcome: Outcome, notes: list[str], outcomes: list[Outcome]) -> None:
    """Attach ``notes``, say what a resumed run's failure means, report a failure, append."""
    outcome.notes = notes
    if "resumed an interrupted run" in notes and outcome.status == Status.FAILED:
        outcome.message += " (pass --force to start it again instead of resuming)"
    outcomes.append(outcome)
    if outcome.status == Status.FAILED:
        tqdm.write(f"[{outcome.experiment.label}] FAILED ({outcome.message}); going on", file=sys.stdout)


def _finished_line(outcome: Outcome) -> str:
    dice = f", best Dice {outcome.best_dice:.2f}" if outcome.best_dice is not None else ""
    return f"[{outcome.experiment.label}] {outcome.status} in {_duration(outcome.seconds)}{dice}"


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
        where = o.message if o.status in (Status.FAILED, Status.INTERRUPTED) else str(o.experiment.run_dir)
        if o.status == Status.SUBMITTED:
            where += f" ({o.message})"
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
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="run up to N experiments at once, each on its own GPU (CUDA_VISIBLE_DEVICES) or, "
                        "without GPUs, on its share of the CPU threads; their log lines go to each run's train.log")
    parser.add_argument("--launcher", choices=("local", "slurm", "local-submitit"), default="local",
                        metavar="{local,slurm}",
                        help="local: run here (default); slurm: submit every experiment as its own Slurm job "
                        "through submitit")
    slurm = parser.add_argument_group("Slurm (--launcher slurm)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", help="time limit per job: minutes (240), H:MM:SS or D-HH:MM:SS")
    slurm.add_argument("--gpus-per-job", type=int, default=None,
                       help="GPUs per job (default 1); more than 1 runs the trainer under torchrun")
    slurm.add_argument("--cpus-per-job", type=int, default=None, help="CPUs per job")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory per job in GB")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="extra sbatch option (repeatable), e.g. --sbatch account=my_project --sbatch qos=high")
    slurm.add_argument("--slurm-config", type=Path, default=None, metavar="YAML",
                       help="the same options in a YAML file (partition, time, gpus_per_job, cpus_per_job, mem_gb, "
                       "sbatch: {key: value}); flags win over it")
    slurm.add_argument("--slurm-logs", type=Path, default=Path("slurm_logs"),
                       help="folder of the jobs' logs (default slurm_logs/)")
    slurm.add_argument("--no-wait", action="store_true",
                       help="submit and exit; run the sweep again (or python -m unet.results) once the jobs ended")
    return parser


def _launcher(args: argparse.Namespace) -> Launcher | None:
    """The Slurm (submitit) launcher ``args`` ask for (None for the local launcher of ``--jobs``)."""
    from .launchers import SlurmOptions, make_executor, parse_sbatch, read_slurm_config

    slurm_flags = (args.partition, args.time, args.gpus_per_job, args.cpus_per_job, args.mem_gb, args.slurm_config)
    if args.launcher == "local":
        if any(v is not None for v in slurm_flags) or args.sbatch or args.no_wait:
            raise UserError("Slurm options (--partition, --time, --gpus-per-job, --cpus-per-job, --mem-gb, --sbatch, "
                            "--slurm-config, --no-wait) need --launcher slurm")
        return None
    if args.jobs != 1:
        raise UserError("--jobs is for the local launcher; with --launcher slurm every experiment is its own job")
    values = read_slurm_config(args.slurm_config) if args.slurm_config else {}
    sbatch = {**{str(k): str(v) for k, v in (values.get("sbatch") or {}).items()}, **parse_sbatch(args.sbatch)}
    options = SlurmOptions(
        partition=args.partition or values.get("partition"),
        time=args.time or (str(values["time"]) if values.get("time") is not None else None),
        gpus_per_job=args.gpus_per_job if args.gpus_per_job is not None else int(values.get("gpus_per_job", 1)),
        cpus_per_job=args.cpus_per_job or values.get("cpus_per_job"),
        mem_gb=args.mem_gb or values.get("mem_gb"),
        sbatch=sbatch,
        logs=args.slurm_logs.resolve(),
    )
    return make_executor("slurm" if args.launcher == "slurm" else "local", options)


def main(argv: list[str] | None = None) -> int:
    """Sweep, print the summary table, optionally write the results; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_progress:
        switch_off()  # the trainers inherit it
    try:
        if args.jobs < 1:
            raise UserError(f"--jobs {args.jobs}: must be at least 1")
        if args.results and args.no_wait:
            raise UserError("--results needs finished runs: drop --no-wait, or run python -m unet.results once the "
                            "jobs ended")
        launcher = _launcher(args)
        outcomes = sweep(args.folders, args.override, args.force, args.only, args.quiet, args.jobs, launcher,
                         not args.no_wait)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:
        print("sweep interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("\n" + format_summary(outcomes))
    failed = [o for o in outcomes if o.status == Status.FAILED]
    interrupted = any(o.status == Status.INTERRUPTED for o in outcomes)
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
