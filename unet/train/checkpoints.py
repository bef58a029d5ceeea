"""What a :class:`unet.train.trainer.Run` saves in its checkpoints (``best.pt``, ``last.pt``; the
file format is :mod:`unet.checkpoint`'s) and what a resumed run restores from ``last.pt``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .. import distributed
from ..checkpoint import save_checkpoint
from ..config import Config
from ..fileio import atomic_path
from ..input_transform import input_transform_record
from ..model import UNet
from ..recipe import Recipe
from .reproducibility import rng_state, seed_everything, set_rng_state
from .runlog import RunLog


class CheckpointSteps:
    """The checkpoint half of :class:`unet.train.trainer.Run` (a mixin: it works on the run's state)."""

    cfg: Config
    recipe: Recipe
    model: UNet
    world: distributed.World
    run_dir: Path
    run_id: str
    best_copy: Path | None
    log: RunLog
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    scaler: Any
    history: list[dict[str, Any]]
    best: dict[str, Any]
    bn_record: dict[str, Any]
    training_batchnorm: dict[str, torch.Tensor] | None

    def _model_state(self, epoch: int) -> dict[str, Any]:
        """What every checkpoint holds: weights, epoch, beta, config, dataset, run id, input
        transform and how its BatchNorm statistics were made."""
        state = {"model": self.model.state_dict(), "epoch": epoch, "beta": self.model.beta(),
                 "config": self.cfg.to_plain(), "dataset": self.recipe.name, "run_id": self.run_id,
                 "input_transform": input_transform_record(self.cfg, self.recipe.name),
                 "batchnorm_statistics": {**self.bn_record, "epoch": epoch}}
        if self.training_batchnorm is not None:
            state["training_batchnorm"] = self.training_batchnorm
        return state

    def _save_best(self, epoch: int, summary: dict[str, float]) -> None:
        """best.pt with the epoch's validation ``summary`` (rank 0), and its copy at ``best_copy``."""
        if not self.world.is_main:
            return
        state = {**self._model_state(epoch), "metrics": summary}
        save_checkpoint(self.run_dir / "best.pt", state)
        if self.best_copy is not None:
            with atomic_path(self.best_copy) as tmp:
                shutil.copyfile(self.run_dir / "best.pt", tmp)

    def _save_last(self, epoch: int) -> None:
        """last.pt: everything an exact resumption needs (a collective under torchrun; rank 0 writes)."""
        extra = self._world_state()
        if not self.world.is_main:
            return
        save_checkpoint(self.run_dir / "last.pt", {
            **self._model_state(epoch), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loader_rng": self.generator.get_state(), "rng": rng_state(),
            "history": self.history, "best": self.best, **extra})

    def _world_state(self) -> dict[str, Any]:
        """What last.pt adds under torchrun or 16-mixed: the world size, every rank's RNG states
        (a collective: every rank calls this) and the GradScaler's state."""
        state: dict[str, Any] = {}
        if self.world.distributed:
            state["world_size"] = self.world.size
            state["rng_ranks"] = distributed.all_gather(self.world, rng_state())
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _restore_world_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_world_state` saved; a resume with another world size is noted."""
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        saved = int(state.get("world_size", 1))
        if saved != self.world.size:
            self.log(f"note: the run was interrupted with {saved} process(es) and resumes with {self.world.size}; "
                     "each rank's share of the data differs from here on, so the remaining epochs do not repeat an "
                     "uninterrupted run exactly")
        if self.world.distributed:
            ranks = state.get("rng_ranks")
            if ranks is not None and len(ranks) == self.world.size:
                set_rng_state(ranks[self.world.rank])
            else:
                seed_everything(self.cfg.seed + self.world.rank)


__all__ = ["CheckpointSteps"]
