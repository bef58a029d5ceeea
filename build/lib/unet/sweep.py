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

``--jobs N`` runs up to N experiments at once, each pinned to its own GPU (or its share of the
CPU threads); ``--launcher slurm`` submits each one as its own Slurm job (:mod:`unet.launchers`).
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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def run_experiment(experiment: Experiment, overrides: Sequence[str], bar: tqdm, quiet: bool = False,
                   env: dict[str, str] | None = None) -> Outcome:
    """Run one trainer subprocess (with ``env`` added to the environment); stream its log lines
    above ``bar`` and return the outcome."""
    command = trainer_command(experiment, overrides)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
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
                if match and env is None:  # concurrent runs: the bar lists the running experiments
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
    jobs: int = 1,
    launcher: Any = None,
    wait_for_jobs: bool = True,
) -> list[Outcome]:
    """Run the experiments under ``folders`` in the paper's order (see :func:`paper_order_key`).

    Finished runs are skipped unless ``force`` (the old run folder is moved aside); interrupted
    runs are resumed; failures are recorded and the sweep continues. Ctrl-C stops the sweep
    after the running trainers have saved their state. ``jobs`` > 1 runs that many at once
    (:func:`unet.launchers.local_slots`); ``launcher`` (a :class:`unet.launchers.JobLauncher`, see
    :func:`unet.launchers.make_executor`) submits each experiment as its own job instead,
    waiting for them unless ``wait_for_jobs`` is false.
    """
    experiments = _group_then_paper_order(collect(folders, overrides, only))
    print(f"sweep: {len(experiments)} experiment(s) in the paper's order: "
          f"{', '.join(e.label for e in experiments)}" + (f"; overrides: {' '.join(overrides)}" if overrides else ""),
          flush=True)
    if launcher is not None:
        return _sweep_jobs(experiments, overrides, force, launcher, wait_for_jobs)
    if jobs > 1:
        return _sweep_concurrent(experiments, overrides, force, jobs)
    outcomes: list[Outcome] = []
    bar = tqdm(experiments, desc="sweep", unit="experiment", file=sys.stderr, dynamic_ncols=True,
               disable=bar_disable())
    for experiment in bar:
        bar.set_postfix_str(experiment.label)
        ready = prepare(experiment, overrides, force)
        if isinstance(ready, Outcome):
            outcomes.append(ready)
            continue
        extra, notes = ready
        outcome = run_experiment(experiment, extra, bar, quiet)
        _record(outcome, notes, outcomes)
        if outcome.status == "interrupted":
            bar.close()
            break
    bar.close()
    return outcomes


def prepare(experiment: Experiment, overrides: Sequence[str], force: bool) -> Outcome | tuple[list[str], list[str]]:
    """Get ``experiment`` ready to run: a ``skipped`` Outcome for a finished run (without
    ``force``), else the trainer's ``-o`` overrides (``operation_mode=resume`` for an interrupted
    run) and notes; with ``force`` an old run folder is moved aside first."""
    run_dir = experiment.run_dir
    extra: list[str] = []
    notes: list[str] = []
    if is_finished(run_dir) and not force:
        outcome = Outcome(experiment, "skipped", message=f"finished run in {run_dir} (--force to re-run)",
                          best_dice=_best_dice(run_dir))
        tqdm.write(f"[{experiment.label}] skipped: {outcome.message}", file=sys.stdout)
        return outcome
    if run_dir is not None and run_dir.exists() and force and any(run_dir.iterdir()):
        moved = move_aside(run_dir)
        notes.append(f"moved the old run folder aside to {moved}")
        tqdm.write(f"[{experiment.label}] --force: moved {run_dir} aside to {moved.name}", file=sys.stdout)
    elif holds_partial_run(run_dir):
        extra = ["operation_mode=resume"]
        notes.append("resumed an interrupted run")
        tqdm.write(f"[{experiment.label}] resuming the interrupted run in {run_dir}", file=sys.stdout)
    return [*absolute_overrides(overrides, experiment.recipe), *extra], notes


def _record(outcome: Outcome, notes: list[str], outcomes: list[Outcome]) -> None:
    """Attach ``notes``, say what a resumed run's failure means, report a failure, append."""
    outcome.notes = notes
    if "resumed an interrupted run" in notes and outcome.status == "failed":
        outcome.message += " (pass --force to start it again instead of resuming)"
    outcomes.append(outcome)
    if outcome.status == "failed":
        tqdm.write(f"[{outcome.experiment.label}] FAILED ({outcome.message}); going on", file=sys.stdout)


def _finished_line(outcome: Outcome) -> str:
    dice = f", best Dice {outcome.best_dice:.2f}" if outcome.best_dice is not None else ""
    return f"[{outcome.experiment.label}] {outcome.status} in {_duration(outcome.seconds)}{dice}"


def _sweep_concurrent(experiments: list[Experiment], overrides: Sequence[str], force: bool,
                      jobs: int) -> list[Outcome]:
    """Up to ``jobs`` trainers at once, each in its own slot (a GPU, or a share of the CPU
    threads); one overall bar listing the running experiments and one line per finished one
    (their own log lines go to each run's train.log)."""
    from .launchers import local_slots

    slots = local_slots(jobs)
    if len(slots) < jobs:
        print(f"sweep: --jobs {jobs} but {len(slots)} GPU(s): running {len(slots)} at once, one per GPU", flush=True)
    free = list(slots)
    pending = list(experiments)
    running: dict[Any, tuple[Experiment, Any, list[str]]] = {}
    outcomes: list[Outcome] = []
    stopping = False
    bar = tqdm(total=len(experiments), desc="sweep", unit="experiment", file=sys.stderr, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        try:
            while running or (pending and not stopping):
                while pending and free and not stopping:
                    experiment = pending.pop(0)
                    ready = prepare(experiment, overrides, force)
                    if isinstance(ready, Outcome):
                        outcomes.append(ready)
                        bar.update(1)
                        continue
                    slot = free.pop(0)
                    extra, notes = ready
                    tqdm.write(f"[{experiment.label}] started ({slot.name})", file=sys.stdout)
                    future = pool.submit(run_experiment, experiment, [*extra, *slot.overrides], bar, True, slot.env)
                    running[future] = (experiment, slot, notes)
                bar.set_postfix_str(", ".join(e.label for e, _, _ in running.values()))
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    _, slot, notes = running.pop(future)
                    free.append(slot)
                    outcome = future.result()
                    _record(outcome, notes, outcomes)
                    if outcome.status != "failed":
                        tqdm.write(_finished_line(outcome), file=sys.stdout)
                    stopping = stopping or outcome.status == "interrupted"
                    bar.update(1)
        except KeyboardInterrupt:
            # The trainers got the same SIGINT: let them save last.pt and stop.
            for future, (_, _, notes) in running.items():
                _record(future.result(), notes, outcomes)
    bar.close()
    order = {e.label: i for i, e in enumerate(experiments)}
    return sorted(outcomes, key=lambda o: order[o.experiment.label])


def _sweep_jobs(experiments: list[Experiment], overrides: Sequence[str], force: bool, launcher: Any,
                wait_for_jobs: bool) -> list[Outcome]:
    """Submit each experiment as its own job through ``launcher`` (:class:`unet.launchers.JobLauncher`); wait for them
    (one bar, one line per finished job) unless ``wait_for_jobs`` is false."""
    outcomes: list[Outcome] = []
    submitted: list[tuple[Experiment, Any, list[str], float]] = []
    for experiment in experiments:
        ready = prepare(experiment, overrides, force)
        if isinstance(ready, Outcome):
            outcomes.append(ready)
            continue
        extra, notes = ready
        job = launcher.submit(trainer_command(experiment, extra), experiment.folder)
        tqdm.write(f"[{experiment.label}] submitted as job {job.job_id}", file=sys.stdout)
        submitted.append((experiment, job, notes, time.perf_counter()))
    if not wait_for_jobs:
        for experiment, job, notes, _ in submitted:
            outcomes.append(Outcome(experiment, "submitted", message=f"job {job.job_id}", notes=notes))
        return outcomes
    bar = tqdm(total=len(submitted), desc="jobs", unit="job", file=sys.stderr, dynamic_ncols=True)
    waiting = list(submitted)
    try:
        while waiting:
            for item in [w for w in waiting if w[1].done()]:
                waiting.remove(item)
                experiment, job, notes, started = item
                outcome = _job_outcome(experiment, job, time.perf_counter() - started)
                _record(outcome, notes, outcomes)
                if outcome.status != "failed":
                    tqdm.write(_finished_line(outcome), file=sys.stdout)
                bar.update(1)
            if waiting:
                time.sleep(0.5)
    except KeyboardInterrupt:
        bar.close()
        ids = " ".join(str(w[1].job_id) for w in waiting)
        print(f"sweep: stopped waiting; the jobs keep running (cancel them with: scancel {ids}); run the sweep "
              "again to collect them", file=sys.stderr)
        for experiment, job, notes, _ in waiting:
            outcomes.append(Outcome(experiment, "interrupted", message=f"job {job.job_id} still running",
                                    notes=notes))
    bar.close()
    order = {e.label: i for i, e in enumerate(experiments)}
    return sorted(outcomes, key=lambda o: order[o.experiment.label])


def _job_outcome(experiment: Experiment, job: Any, seconds: float) -> Outcome:
    """The outcome of a finished job: the trainer's exit status and error line, or the last line
    of the job's own failure (timeout, cancelled, node failure)."""
    try:
        result = job.result()
    except Exception as exc:  # noqa: BLE001 - submitit raises the job's failure as an exception
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        return Outcome(experiment, "failed", seconds, f"job {job.job_id}: {lines[-1] if lines else type(exc).__name__}")
    code = result["exit"]
    if code == 0:
        return Outcome(experiment, "finished", seconds, "", _best_dice(experiment.run_dir))
    status = "interrupted" if code == EXIT_INTERRUPTED else "failed"
    return Outcome(experiment, status, seconds, f"exit {code}: {last_error_line(result['stdout'], result['stderr'])}")


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
        if o.status == "submitted":
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


def _launcher(args: argparse.Namespace) -> Any:
    """The submitit executor ``args`` ask for (None for the local launcher)."""
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
