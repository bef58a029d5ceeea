"""Run-folder rules: run ids, which folder holds a run, the next free ``<name>-N`` folder, what
to tell a user whose folder is taken, where the best model is copied, checkpoint tags."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint
from ..config import COMMON_KEYS, Config
from ..errors import DataError, UserError
from ..invocation import Invocation, recorded, resume_command
from ..recipe import Recipe


def new_run_id() -> str:
    """A fresh run id (uuid4 hex) that every checkpoint of the run carries as ``run_id``."""
    return uuid.uuid4().hex


def checkpoint_run_id(path: Path) -> str | None:
    """The ``run_id`` of the checkpoint at ``path`` (read safely); None when the file has none or
    is not a readable checkpoint."""
    try:
        run_id = load_checkpoint(path).get("run_id")
    except DataError:
        return None
    return run_id if isinstance(run_id, str) else None


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a training run."""
    return any((run_dir / name).exists() for name in ("metrics.csv", "last.pt", "best.pt"))


def next_free_run_dir(run_dir: Path) -> Path:
    """``run_dir`` with the smallest suffix ``-2``, ``-3``, ... that holds no run."""
    n = 2
    while holds_run(run_dir.with_name(f"{run_dir.name}-{n}")):
        n += 1
    return run_dir.with_name(f"{run_dir.name}-{n}")


def topmost_missing(path: Path) -> Path:
    """The outermost folder of ``path`` that does not exist yet (what mkdir -p would create)."""
    while not path.parent.exists():
        path = path.parent
    return path


def checkpoint_tag(checkpoint: Path, run_dir: Path) -> str:
    """A file-name tag for ``checkpoint``: its stem (``best``) when it lies in ``run_dir``, else
    ``<its folder>-<stem>`` (``a6.0_w0.4-best``)."""
    checkpoint = Path(checkpoint)
    if checkpoint.resolve().parent == Path(run_dir).resolve():
        return checkpoint.stem
    return f"{checkpoint.resolve().parent.name}-{checkpoint.stem}"


def existing_run_message(run_dir: Path, cfg: Config, recipe: Recipe, invocation: Invocation | None) -> str:
    """Why normal/retrain refuse ``run_dir`` and what to do: resume an unfinished run (with the
    command that started it, from its command.txt), or for a finished one a new run beside it,
    another experiment_name, or inference."""
    keys = (*COMMON_KEYS, *recipe.extra_keys)
    if (run_dir / "summary.json").is_file():
        return f"run folder {run_dir} already holds a finished run; " + finished_alternatives(
            run_dir, cfg, recipe, invocation)
    done = logged_epochs(run_dir)
    where = f"an unfinished run ({done} of {cfg.num_epochs} epochs logged)"
    started = next(iter(recorded(run_dir)), None) or invocation
    if (run_dir / "last.pt").is_file() and started is not None:
        cont = f"continue it with: {resume_command(started, run_dir, cfg.experiment_name, keys)}"
    elif (run_dir / "last.pt").is_file():
        cont = "continue it with -o operation_mode=resume"
    else:
        cont = "it has no last.pt to resume from"
    new = f"pass --new-run to start {next_free_run_dir(run_dir).name} beside it"
    return f"run folder {run_dir} already holds {where}; {cont}; or {new}, or choose another experiment_name"


def finished_alternatives(run_dir: Path, cfg: Config, recipe: Recipe, invocation: Invocation | None) -> str:
    """What to do instead with the finished run in ``run_dir``: the command that trains again
    beside it, the one that evaluates its best.pt, or another experiment_name."""
    keys = (*COMMON_KEYS, *recipe.extra_keys)
    beside = next_free_run_dir(run_dir).name
    if invocation is None:
        return (f"pass --new-run to train again in {beside}, choose another experiment_name, or evaluate it "
                "with -o operation_mode=inference")
    train_mode = cfg.operation_mode if cfg.operation_mode in ("normal", "retrain") else "normal"
    again = invocation.with_mode(train_mode, add_flags=("--new-run",)).shell(keys)
    name = run_dir.name if run_dir.name != cfg.experiment_name else None
    evaluate_ = invocation.with_mode("inference", name, drop_flags=("--new-run", "--overwrite-trained-model"))
    return (f"to train again beside it (in {beside}) run: {again}; to evaluate its best.pt run: "
            f"{evaluate_.shell(keys)}; or choose another experiment_name")


def logged_epochs(run_dir: Path) -> int:
    """Rows of ``run_dir/metrics.csv`` (0 when absent)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as handle:
        return max(sum(1 for line in handle if line.strip()) - 1, 0)


def best_model_copy(cfg: Config, resume_state: dict[str, Any] | None, run_id: str, overwrite: bool) -> Path | None:
    """Where the run copies its best model: ``trained_model`` when the run started in normal mode
    (a resumed run keeps its original mode), else None. UserError when a file there was not
    written by this run (``run_id``) and ``overwrite`` is not set."""
    started_as = resume_state.get("config", {}).get("operation_mode") if resume_state else cfg.operation_mode
    if started_as != "normal" or cfg.trained_model is None:
        return None
    target = Path(cfg.trained_model)
    if target.is_dir():
        raise UserError(f"trained_model {target} is a folder; set it to a file path such as {target / 'best.pt'}")
    if target.exists() and not overwrite and checkpoint_run_id(target) != run_id:
        raise UserError(f"trained_model {target} already exists and was not written by this run; normal mode "
                        "would replace it with this run's best model: pass --overwrite-trained-model to replace "
                        "it, or set trained_model to a new path (or null)")
    return target


__all__ = ["best_model_copy", "checkpoint_run_id", "checkpoint_tag", "existing_run_message", "finished_alternatives",
           "holds_run", "logged_epochs", "new_run_id", "next_free_run_dir", "topmost_missing"]
