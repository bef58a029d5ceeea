"""Where the sweep's experiments run: one small :class:`Launcher` interface and its three
implementations, so that :func:`unet.sweep.sweep` is one loop whatever runs the trainers.

- :class:`LocalLauncher` with one slot: one trainer after the other, its log lines echoed;
- :class:`LocalLauncher` with :func:`local_slots`: up to N trainers at once, each pinned to its own
  GPU (or its share of the CPU threads), their log lines left to each run's train.log;
- :class:`JobLauncher`: every trainer a Slurm job submitted through ``submitit``.

A Slurm job runs exactly the command a local sweep runs (``python <trainer> -f config.yaml -t
UNET -o ...`` from the experiment folder; ``torchrun --nproc_per_node=G`` in front when the job
has G > 1 GPUs) and returns its exit status and the end of its output, so a failed job is
reported with its error line like a failed local run. The run folders are the same, so
``python -m unet.results`` reads them as usual.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from .errors import UserError


@dataclass(frozen=True)
class Slot:
    """What one concurrently running experiment gets: ``env`` entries and ``overrides``."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()


@dataclass
class TrainerExit:
    """How one trainer process ended: its exit status, its last stdout lines and the end of its stderr."""

    code: int
    stdout: list[str]
    stderr: str


class LaunchFailed(Exception):
    """The launcher could not run the trainer to its end (a Slurm job timed out, was cancelled,
    lost its node); the message is the line to report."""


class Handle(Protocol):
    """One started trainer."""

    def done(self) -> bool:
        """Whether the trainer has ended."""
        ...

    def result(self) -> TrainerExit:
        """How it ended (waits for the end); raises :class:`LaunchFailed` when the launcher failed it."""
        ...


class Launcher(Protocol):
    """What the sweep's loop needs from whatever runs the trainers.

    ``capacity``: how many trainers may run at once (None: no limit, every one is submitted at
    once); ``detached``: the trainers outlive the sweep (Slurm jobs): on Ctrl-C the sweep stops
    waiting instead of waiting for them to save, and it may exit right after submitting;
    ``announces``: say when each trainer starts and ends (the serial sweep echoes the trainers'
    own lines instead).
    """

    capacity: int | None
    detached: bool
    announces: bool

    def start(self, label: str, command: Sequence[str], cwd: Path) -> tuple[Handle, str]:
        """Start ``command`` from ``cwd`` for the experiment ``label``; the handle and where it runs
        (``GPU 0``, ``job 1234``) for the started line."""
        ...

    def close(self) -> None:
        """Release what the launcher holds (threads); the trainers have ended or are detached."""
        ...


def run_trainer(command: Sequence[str], cwd: Path | str, env: dict[str, str] | None = None,
                on_line: Callable[[str], None] | None = None, keep: int | None = None) -> TrainerExit:
    """Run one trainer process from ``cwd`` (``env`` added to the environment, unbuffered output);
    ``on_line`` gets each stdout line as it comes; ``keep``: how many trailing stdout lines to keep
    (all when None); stderr is kept in a temporary file."""
    lines: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        process = subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   encoding="utf-8", errors="replace", env=env)
        try:
            for line in process.stdout or ():
                line = line.rstrip("\n")
                lines.append(line)
                if keep is not None and len(lines) > 2 * keep:
                    del lines[:-keep]
                if on_line is not None:
                    on_line(line)
        finally:
            code = process.wait()  # on Ctrl-C the trainer got the same SIGINT: it saves last.pt and stops
        stderr.seek(0)
        err = stderr.read()
    return TrainerExit(code, lines if keep is None else lines[-keep:], err)


@dataclass
class _LocalHandle:
    future: Future

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> TrainerExit:
        return self.future.result()


class LocalLauncher:
    """Trainer subprocesses on this machine, one per :class:`Slot` at a time.

    With one slot and ``echo`` the trainers' stdout lines are written above the progress bar as
    ``[label] line`` and passed to ``on_line(label, line)`` (the bar's epoch display); with several
    slots each trainer gets its slot's environment and ``-o`` overrides and its lines stay in its
    train.log.
    """

    detached = False

    def __init__(self, slots: Sequence[Slot], echo: bool = False,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.slots = list(slots) or [Slot("here")]
        self.capacity: int | None = len(self.slots)
        self.announces = len(self.slots) > 1
        self.echo = echo
        self.on_line = on_line
        self._free = list(self.slots)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(self.slots))

    def start(self, label: str, command: Sequence[str], cwd: Path) -> tuple[Handle, str]:
        """Run ``command`` in a free slot (the sweep starts no more than ``capacity`` at once)."""
        with self._lock:
            slot = self._free.pop(0)
        return _LocalHandle(self._pool.submit(self._run, slot, label, [*command, *_as_flags(slot.overrides)],
                                              cwd)), slot.name

    def _run(self, slot: Slot, label: str, command: list[str], cwd: Path) -> TrainerExit:
        def on_line(line: str) -> None:
            if self.on_line is not None:
                self.on_line(label, line)
            if self.echo:
                from tqdm.auto import tqdm

                tqdm.write(f"[{label}] {line}", file=sys.stdout)

        try:
            return run_trainer(command, cwd, slot.env, on_line)
        finally:
            with self._lock:
                self._free.append(slot)

    def close(self) -> None:
        """Wait for the threads (their trainers have ended)."""
        self._pool.shutdown(wait=True)


def _as_flags(overrides: Sequence[str]) -> list[str]:
    return [word for text in overrides for word in ("-o", text)]


def visible_gpus() -> list[str]:
    """The GPU ids a child may use: ``CUDA_VISIBLE_DEVICES``'s entries when it is set, else
    ``0 .. torch.cuda.device_count() - 1`` (none without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def local_slots(jobs: int, gpus: Sequence[str] | None = None, cpus: int | None = None) -> list[Slot]:
    """Up to ``jobs`` slots: one per GPU (``CUDA_VISIBLE_DEVICES=<id>``, ``gpu_core_num=0``)
    when there are GPUs (never more slots than GPUs), else ``jobs`` slots sharing the CPUs,
    ``max(1, cpus // jobs)`` threads each (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``)."""
    gpus = visible_gpus() if gpus is None else list(gpus)
    if gpus:
        return [Slot(f"GPU {g}", {"CUDA_VISIBLE_DEVICES": g}, ("gpu_core_num=0",)) for g in gpus[:jobs]]
    threads = max(1, (cpus or cpu_count()) // jobs)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    return [Slot(f"{threads} CPU thread{'s' if threads > 1 else ''}", env) for _ in range(jobs)]


# --- Slurm through submitit ------------------------------------------------------------------

#: Keys of ``--slurm-config`` YAML files (the same as the sweep's ``--slurm-*`` flags).
SLURM_KEYS = ("partition", "time", "gpus_per_job", "cpus_per_job", "mem_gb", "sbatch")


@dataclass
class SlurmOptions:
    """One Slurm job per experiment: ``partition``, ``time`` (minutes, ``H:MM:SS`` or
    ``D-HH:MM:SS``), GPUs, CPUs and memory (GB) per job, extra ``sbatch`` options (``--key=value``
    without the dashes), and the folder of submitit's logs and pickles."""

    partition: str | None = None
    time: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    sbatch: dict[str, str] = field(default_factory=dict)
    logs: Path = Path("slurm_logs")

    def parameters(self) -> dict[str, Any]:
        """``update_parameters`` keyword arguments of a submitit AutoExecutor."""
        params: dict[str, Any] = {"gpus_per_node": self.gpus_per_job, "tasks_per_node": 1, "nodes": 1,
                                  "name": "unet-sweep"}
        if self.time is not None:
            params["timeout_min"] = minutes(self.time)
        if self.cpus_per_job is not None:
            params["cpus_per_task"] = self.cpus_per_job
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition is not None:
            params["slurm_partition"] = self.partition
        if self.sbatch:
            params["slurm_additional_parameters"] = dict(self.sbatch)
        return params


def minutes(text: str | int) -> int:
    """Slurm's time formats in whole minutes: ``90``, ``1:30:00`` (H:MM:SS), ``2-00:00:00``
    (D-HH:MM:SS), ``45:00`` (MM:SS); seconds round up. UserError for anything else."""
    text = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise UserError(f"--slurm-time {text!r}: expected minutes (90), H:MM:SS (1:30:00) or D-HH:MM:SS")
    days, a, b, c = (int(g) if g else 0 for g in match.groups())
    if match.group(4) is not None:  # H:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif match.group(3) is not None:  # MM:SS, or D-HH:MM
        seconds = a * 3600 + b * 60 if match.group(1) else a * 60 + b
    else:
        seconds = a * 3600 if match.group(1) else a * 60
    return max(1, -(-(days * 86400 + seconds) // 60))


def parse_sbatch(items: Sequence[str]) -> dict[str, str]:
    """``--sbatch key=value`` items (``account=abc``, ``--constraint=a100``) as a dict."""
    out = {}
    for item in items:
        key, sep, value = item.lstrip("-").partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch {item}: expected key=value, e.g. --sbatch account=my_project")
        out[key.strip()] = value.strip()
    return out


def read_slurm_config(path: Path) -> dict[str, Any]:
    """A small YAML of Slurm options (:data:`SLURM_KEYS`; ``sbatch`` a mapping); UserError
    naming the file and key when it does not fit."""
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--slurm-config {path}: cannot read it ({exc})") from None
    if not isinstance(document, dict):
        raise UserError(f"--slurm-config {path}: expected a mapping of {', '.join(SLURM_KEYS)}")
    unknown = sorted(set(document) - set(SLURM_KEYS))
    if unknown:
        raise UserError(f"--slurm-config {path}: unknown key(s) {', '.join(map(str, unknown))}; "
                        f"known: {', '.join(SLURM_KEYS)}")
    if "sbatch" in document and not isinstance(document["sbatch"], dict):
        raise UserError(f"--slurm-config {path}: sbatch must be a mapping of option: value")
    return document


@dataclass
class _JobHandle:
    job: Any

    def done(self) -> bool:
        return self.job.done()

    def result(self) -> TrainerExit:
        try:
            result = self.job.result()
        except Exception as exc:  # noqa: BLE001 - submitit raises the job's failure (timeout, cancel) as an exception
            lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
            raise LaunchFailed(f"job {self.job.job_id}: {lines[-1] if lines else type(exc).__name__}") from None
        return TrainerExit(result["exit"], result["stdout"], result["stderr"])


@dataclass
class JobLauncher:
    """Submits trainer commands as jobs of a submitit ``executor`` (any object with
    ``submit(fn, *args)``), each with ``gpus_per_job`` GPUs; every experiment at once."""

    executor: Any
    gpus_per_job: int = 1
    capacity: int | None = None
    detached: bool = True
    announces: bool = True

    def submit(self, command: Sequence[str], cwd: Path) -> Any:
        """Submit ``command`` (run from ``cwd``) as one job; the submitit job."""
        return self.executor.submit(run_trainer_job, job_command(command, self.gpus_per_job), str(cwd))

    def start(self, label: str, command: Sequence[str], cwd: Path) -> tuple[Handle, str]:
        """Submit ``command`` as a job; its handle and ``job <id>``."""
        job = self.submit(command, cwd)
        return _JobHandle(job), f"job {job.job_id}"

    def close(self) -> None:
        """Nothing to release: the jobs run on the cluster."""


def make_executor(cluster: str, options: SlurmOptions) -> JobLauncher:
    """A launcher over a submitit AutoExecutor for ``cluster`` (``slurm``; ``local``: real
    local processes, for tests and machines without Slurm) with ``options`` applied."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install submitit") from None
    options.logs.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=options.logs / "%j", cluster=cluster)
    params = options.parameters()
    if cluster != "slurm":
        params["gpus_per_node"] = min(options.gpus_per_job, len(visible_gpus()))
    executor.update_parameters(**params)
    return JobLauncher(executor, options.gpus_per_job)


def job_command(command: Sequence[str], gpus: int) -> list[str]:
    """The trainer command of a job: under ``torchrun --standalone --nproc_per_node=gpus`` when
    the job has more than one GPU, else unchanged."""
    if gpus <= 1:
        return list(command)
    return [command[0], "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", *command[1:]]


def run_trainer_job(command: Sequence[str], cwd: str) -> dict[str, Any]:
    """Run one trainer in a job (output streamed to the job's log); its exit status, the last 50
    stdout lines and the end of stderr (the sweep picks the error line from them)."""
    ended = run_trainer(command, cwd, on_line=lambda line: print(line, flush=True), keep=50)
    sys.stderr.write(ended.stderr)
    return {"exit": ended.code, "stdout": ended.stdout, "stderr": ended.stderr[-20000:]}


__all__ = ["SLURM_KEYS", "Handle", "JobLauncher", "LaunchFailed", "Launcher", "LocalLauncher", "Slot", "SlurmOptions",
           "TrainerExit", "job_command", "local_slots", "make_executor", "minutes", "parse_sbatch",
           "read_slurm_config", "run_trainer", "run_trainer_job", "visible_gpus"]
