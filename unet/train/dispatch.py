"""Starting a training run: the run folder's lock and checks, the operation mode's dispatch
(normal, retrain, resume, inference, visualize), and what a failed or interrupted start leaves."""

from __future__ import annotations

import errno
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from .. import distributed
from ..checkpoint import load_checkpoint
from ..config import Config
from ..errors import DataError, UserError
from ..fileio import check_writable_dir, remove_stale_temporaries, removed_note
from ..interrupts import Interrupted
from ..invocation import Invocation, record
from ..lock import FolderLock
from ..recipe import Recipe
from ..trained import TrainedModel
from .rundir import (
    best_model_copy,
    existing_run_message,
    finished_alternatives,
    holds_run,
    new_run_id,
    next_free_run_dir,
    topmost_missing,
)
from .trainer import Run

#: Keys that may differ between an interrupted run and the command that resumes it.
RESUME_FREE_KEYS = ("operation_mode", "gpu_core_num", "num_workers", "trained_model", "allow_unsafe_checkpoint")
#: Write errors a user fixes (full disk or quota, read-only file system): one line, not a traceback.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def run(cfg: Config, recipe: Recipe, script: str, new_run: bool = False, overwrite_trained_model: bool = False,
        invocation: Invocation | None = None) -> int:
    """Carry out ``cfg.operation_mode``; return the process exit status.

    normal / retrain refuse a run folder that already holds a run unless ``new_run``
    (then the next free ``<name>-N`` folder is used); resume needs the folder's last.pt.
    A run started in normal mode copies its best model to ``trained_model``: an existing file
    there that this run did not write is refused unless ``overwrite_trained_model``.
    ``invocation`` (the command line) is recorded in the run folder's command.txt and makes the
    hints commands that work as printed. Inference and visualize take the model-defining keys
    from the checkpoint (a conflicting setting is a ConfigError).

    Started by torchrun (``WORLD_SIZE`` > 1) the process joins the others first
    (:mod:`unet.distributed`); every rank checks the same things, then only rank 0 writes.
    """
    world = distributed.env_world()
    distributed.check_config(cfg, world)
    distributed.init(world)
    try:
        status = _run(cfg, recipe, script, new_run, overwrite_trained_model, world, invocation)
        # no rank leaves the group while another still writes or talks to it: a gloo rank whose
        # peer tore down first was seen to abort at exit ("terminate called without an active exception")
        distributed.barrier(world)
        return status
    finally:
        distributed.teardown(world)


def _run(cfg: Config, recipe: Recipe, script: str, new_run: bool, overwrite_trained_model: bool,
         world: distributed.World, invocation: Invocation | None) -> int:
    """:func:`run` in the process group of ``world``: rank 0 holds the run folder's lock
    (:mod:`unet.lock`) from before its checks to the end, so two trainings never share a folder."""
    run_dir = Path(cfg.log_output_dir) / cfg.experiment_name
    locks: list[FolderLock] = []
    made = None if not world.is_main or run_dir.parent.exists() else topmost_missing(run_dir.parent)
    try:
        if world.is_main:
            check_writable_dir(run_dir.parent, "log_output_dir")
            locks.append(FolderLock(run_dir, "run folder"))
            locks[-1].acquire()
        return _run_locked(cfg, recipe, script, new_run, overwrite_trained_model, world, invocation, locks)
    finally:
        for lock in locks:
            lock.release()
        if made is not None:  # a failed start leaves no empty log_output_dir behind either
            folder = run_dir.parent
            while folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
                if folder == made:
                    break
                folder = folder.parent


def _run_locked(cfg: Config, recipe: Recipe, script: str, new_run: bool, overwrite_trained_model: bool,
                world: distributed.World, invocation: Invocation | None, locks: list[FolderLock]) -> int:
    """:func:`_run` once rank 0 holds the run folder's lock; a new run's folder is locked too."""
    mode = cfg.operation_mode
    run_dir = Path(cfg.log_output_dir) / cfg.experiment_name
    checkpoint = Path(cfg.trained_model) if cfg.trained_model is not None else run_dir / "best.pt"
    if mode in ("normal", "retrain") and holds_run(run_dir):
        if not new_run:
            raise UserError(existing_run_message(run_dir, cfg, recipe, invocation))
        run_dir = next_free_run_dir(run_dir)
        if world.is_main:
            locks.append(FolderLock(run_dir, "run folder"))
            locks[-1].acquire()
        cfg["experiment_name"] = run_dir.name  # its config.yaml and checkpoints name the folder it is in
    resume_state = resumable_state(run_dir, cfg, recipe, invocation) if mode == "resume" else None
    if world.is_main and run_dir.is_dir():  # the lock makes the folder ours: a killed write's leftovers go
        removed = remove_stale_temporaries(run_dir, recursive=True)
        if removed:
            print(removed_note(removed, f"an interrupted write left in {run_dir}"), file=sys.stderr)
    run_id = (resume_state or {}).get("run_id") or new_run_id()
    best_copy = best_model_copy(cfg, resume_state, run_id, overwrite_trained_model)
    if mode in ("retrain", "inference", "visualize") and not checkpoint.is_file():
        raise DataError(f"checkpoint {checkpoint} does not exist; set trained_model to a best.pt "
                        "of an earlier run (or run operation_mode: normal first)")
    preloaded = None
    if mode in ("inference", "visualize"):
        trained = TrainedModel.load(checkpoint, cfg, defaults_source=str(recipe.base_config),
                                    allow_unsafe=cfg.allow_unsafe_checkpoint)
        preloaded, cfg = trained.state, trained.config
    distributed.barrier(world)  # every rank has checked the folder before rank 0 writes to it
    created = None if run_dir.exists() or not world.is_main else topmost_missing(run_dir)
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    session: Run | None = None

    def discard_failed_start() -> bool:
        """Remove the run folder this start created when no epoch was logged; whether it did."""
        if created is None or (run_dir / "metrics.csv").exists():
            return False
        shutil.rmtree(created, ignore_errors=True)
        return True

    try:  # from the folder's creation on, a failed or interrupted start removes what it created
        if world.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if invocation is not None:
                record(run_dir, invocation, mode)
        stop = distributed.StopRequest() if world.distributed else None
        if threading_main():
            _install_stop_handlers(stop)
        session = Run(cfg, recipe, run_dir, script, run_id, best_copy if world.is_main else None, world, stop)
        session.invocation = invocation
        session.preloaded = preloaded
        return _dispatch(session, mode, checkpoint, resume_state)
    except UserError:
        discard_failed_start()  # a failed start leaves no run folder behind
        raise
    except KeyboardInterrupt:  # before the epoch loop took over (start-up) or after it (the final test)
        if discard_failed_start():
            raise Interrupted("interrupted during start-up, before the first epoch; nothing was kept: run the same "
                              "command again") from None
        raise Interrupted(f"interrupted; {run_dir} keeps what was written before (every file there is written "
                          f"whole){_continue_hint(run_dir, session)}") from None
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS:
            raise
        discard_failed_start()
        where = exc.filename or run_dir
        raise UserError(f"cannot write {where} ({exc.strerror}); the files already in {run_dir} are intact (each is "
                        f"replaced whole, never half-written){_continue_hint(run_dir, session)}"
                        ) from None
    finally:
        if threading_main():
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def resumable_state(run_dir: Path, cfg: Config, recipe: Recipe, invocation: Invocation | None) -> dict[str, Any]:
    """The last.pt of the interrupted run in ``run_dir`` that ``cfg`` resumes; UserError when there is
    none, when the config differs from the run's in a key other than :data:`RESUME_FREE_KEYS`, or
    when the run already finished."""
    if not (run_dir / "last.pt").is_file():
        raise UserError(f"nothing to resume: {run_dir / 'last.pt'} does not exist")
    resume_state = load_checkpoint(run_dir / "last.pt", cfg.allow_unsafe_checkpoint)
    saved = resume_state.get("config", {})
    changed = [k for k, v in cfg.to_plain().items() if k not in RESUME_FREE_KEYS and saved.get(k, v) != v]
    if changed:
        raise UserError(f"cannot resume {run_dir}: the config differs from the interrupted run in "
                        f"{', '.join(changed)}; restore those keys (the run's config.yaml has them)")
    if (run_dir / "summary.json").is_file():
        raise UserError(f"run {run_dir} already finished; nothing to resume. "
                        + finished_alternatives(run_dir, cfg, recipe, invocation))
    return resume_state


def _dispatch(session: Run, mode: str, checkpoint: Path, resume_state: dict[str, Any] | None) -> int:
    """Carry out ``mode`` in ``session``; the exit status."""
    if mode == "inference":
        return session.inference(checkpoint)
    if mode == "visualize":
        return session.visualize(checkpoint)
    if mode == "retrain":
        return session.retrain(checkpoint)
    if mode == "resume":
        return session.resume(resume_state)
    return session.normal()


def _continue_hint(run_dir: Path, session: Run | None) -> str:
    """How to go on after a stop: resume from last.pt when there is one, else start again."""
    if not (run_dir / "last.pt").is_file():
        return "; there is no checkpoint to resume from yet: fix that and run the same command again"
    command = session.resume_hint() if session is not None else "-o operation_mode=resume"
    return f"; last.pt holds the last completed epoch: fix that and continue with: {command}"


def _raise_on_sigterm(signum: int, frame: object) -> None:  # noqa: ARG001
    """SIGTERM stops a run as Ctrl-C does."""
    raise KeyboardInterrupt


def _install_stop_handlers(stop: distributed.StopRequest | None) -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, also when the process was started with
    SIGINT ignored (as a non-interactive shell does for background jobs); under torchrun they
    set ``stop`` instead, which every rank checks at the next batch."""
    if stop is not None:
        stop.install()
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)


def threading_main() -> bool:
    """Whether this is the main thread (only it may install signal handlers)."""
    return threading.current_thread() is threading.main_thread()


__all__ = ["RESUME_FREE_KEYS", "WRITE_ERRNOS", "resumable_state", "run"]
