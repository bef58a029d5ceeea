"""One training epoch of a :class:`unet.train.trainer.Run`: the optimizer steps (mixed precision,
DDP under torchrun) and the checks that stop a run: a NaN or infinite loss, a stop request."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from .. import distributed
from ..config import Config
from ..model import UNet
from ..precision import autocast, grad_scaler
from ..progress import bar_disable
from .loaders import training_loader
from .reproducibility import seed_everything


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


class TrainingSteps:
    """The training half of :class:`unet.train.trainer.Run` (a mixin: it works on the run's state)."""

    cfg: Config
    model: UNet
    device: torch.device
    world: distributed.World
    stop: distributed.StopRequest | None
    train_set: Dataset
    generator: torch.Generator

    def _prepare_world(self) -> None:
        """The module a training step calls (``self.model``, DDP-wrapped under torchrun), the
        per-rank RNG streams (``seed + rank``: dropout and augmentation differ between ranks) and
        the GradScaler of ``precision: 16-mixed``."""
        self.net = distributed.wrap(self.model, self.world, self.device, self.cfg.sync_batchnorm)
        if self.world.distributed:
            seed_everything(self.cfg.seed + self.world.rank)
        self.scaler = grad_scaler(self.device, self.cfg.precision)

    def _train_loader(self) -> DataLoader:
        """The training loader (:func:`unet.train.loaders.training_loader`)."""
        return training_loader(self.train_set, self.cfg, self.world, self.generator)

    def _train_epoch(self, epoch: int, loader: DataLoader, optimizer: torch.optim.Optimizer, loss_fn: Any) -> float:
        """Train one epoch; the mean loss per sample (over every rank's samples under torchrun)."""
        self.model.train()
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, unit="batch", mininterval=0.5,
                   disable=bar_disable(hide=not self.world.is_main))
        for batch, (images, masks) in enumerate(bar, 1):
            images = images.to(self.device, non_blocking=True)
            masks = masks.to(self.device, non_blocking=True)
            value = self._train_step(images, masks, optimizer, loss_fn, f"at epoch {epoch}, batch {batch}")
            total += value * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{total / count:.4f}")
        if self.world.distributed:
            parts = distributed.all_gather(self.world, (total, count))
            total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
        return total / max(count, 1)

    def _train_step(self, images: torch.Tensor, masks: torch.Tensor, optimizer: torch.optim.Optimizer, loss_fn: Any,
                    where: str) -> float:
        """One optimizer step on ``images`` (this rank's share of the batch under torchrun, where
        DDP averages the ranks' gradients in backward), forward under the ``precision``'s
        autocast, loss in float32; returns the loss. TrainingDiverged when the output or the
        loss is NaN or infinite (on any rank); KeyboardInterrupt on every rank once one was
        asked to stop (SIGINT/SIGTERM)."""
        optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.cfg.precision):
            probs = self.net(images)
        problem, loss, value = None, None, math.nan
        if not bool(torch.isfinite(probs).all()):  # BCE refuses NaN input with a RuntimeError
            problem = f"the model output became NaN or infinite {where}"
        else:
            loss = loss_fn(probs.float(), masks)
            value = loss.item()
            if not math.isfinite(value):
                problem = f"the loss became {value} {where}"
        if self.world.distributed:
            self._stop_with_every_rank(problem, where)
        elif problem is not None:
            raise TrainingDiverged(problem)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return value

    def _stop_with_every_rank(self, problem: str | None, where: str) -> None:
        """Share this rank's NaN finding and stop request with the others (one all-reduce) and
        raise the same on every rank: TrainingDiverged, or KeyboardInterrupt."""
        requested = self.stop is not None and self.stop.requested
        diverged, stop = distributed.any_rank(self.world, (problem is not None, requested), self.device)
        if diverged:
            raise TrainingDiverged(problem or f"the loss became NaN or infinite on another rank {where}")
        if stop:
            raise KeyboardInterrupt


__all__ = ["TrainingDiverged", "TrainingSteps"]
