"""Where the sweep's experiments run: local slots (a GPU or a share of the CPU threads each) or
Slurm jobs submitted through ``submitit``.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


@dataclass(frozen=True)
class Slot:
    """What one concurrently running experiment gets: ``env`` entries and ``overrides``."""

    name: str
    env: dict[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()


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
class JobLauncher:
    """Submits trainer commands as jobs of a submitit ``executor`` (any object with
    ``submit(fn, *args)``), each with ``gpus_per_job`` GPUs."""

    executor: Any
    gpus_per_job: int = 1

    def submit(self, command: Sequence[str], cwd: Path) -> Any:
        """Submit ``command`` (run from ``cwd``) as one job; the submitit job."""
        return self.executor.submit(run_trainer_job, job_command(command, self.gpus_per_job), str(cwd))


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
    lines: list[str] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as stderr:
        process = subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   encoding="utf-8", errors="replace", env=env)
        for line in process.stdout or ():
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
        code = process.wait()
        stderr.seek(0)
        err = stderr.read()
    sys.stderr.write(err)
    return {"exit": code, "stdout": lines[-50:], "stderr": err[-20000:]}


__all__ = ["SLURM_KEYS", "JobLauncher", "Slot", "SlurmOptions", "job_command", "local_slots", "make_executor",
           "minutes", "parse_sbatch", "read_slurm_config", "run_trainer_job", "visible_gpus"]
