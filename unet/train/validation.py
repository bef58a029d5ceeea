"""The validation steps of a :class:`unet.train.trainer.Run`: the protocol's validation
(``val_bn_mode``), the BatchNorm statistics the checkpoints deploy (recomputed per
``bn_recalibration``) and the validation of the model as deployed (eval mode)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from .. import distributed
from ..batchnorm import batchnorm_buffers, differs, preserved_rng, recalibrate_batchnorm
from ..checkpoint import TRAINING_AVERAGES
from ..config import Config
from ..model import UNet
from ..recipe import Recipe
from .evaluation import evaluate

#: The validation figures logged for the model as deployed (``eval_<name>`` in metrics.csv).
DEPLOYED_FIGURES = ("dice", "dice_std", "val_loss")


class ValidationSteps:
    """The validation half of :class:`unet.train.trainer.Run` (a mixin: it works on the run's state)."""

    cfg: Config
    recipe: Recipe
    model: UNet
    device: torch.device
    world: distributed.World
    train_set: Dataset
    val_set: Dataset
    history: list[dict[str, Any]]
    bn_record: dict[str, Any]
    bn_seconds: float
    training_batchnorm: dict[str, torch.Tensor] | None

    def _validate(self, val_set: Dataset) -> tuple[dict[str, float], list[dict[str, Any]], list]:
        """:func:`evaluate` over ``val_set``; under torchrun every rank first takes rank 0's BatchNorm
        statistics (what its checkpoints hold) and evaluates its share of the batches."""
        distributed.broadcast_buffers(self.world, self.model)
        with distributed.local_batchnorm(self.world, self.model):
            return evaluate(self.model, val_set, self.cfg, self.device, self.recipe.isbi_metrics, world=self.world)

    def _recalibrates(self, epoch: int, improved: bool) -> bool:
        """Whether this epoch's checkpoints get recomputed statistics: every epoch with
        ``bn_recalibration: true``; with ``best`` only when the epoch writes a new best.pt or is the
        last one (its last.pt); never with ``false``."""
        policy = self.cfg.bn_recalibration
        return policy == "true" or policy == "best" and (improved or epoch == self.cfg.num_epochs)

    def _deployable_statistics(self, epoch: int, recalibrate: bool) -> dict[str, torch.Tensor] | None:
        """When ``recalibrate``: recompute every BatchNorm's running statistics over the training
        set for the weights of this epoch (:func:`unet.batchnorm.recalibrate_batchnorm`, no
        augmentation, every RNG left as it was) and return the moving averages training goes on
        with, which the checkpoints keep as ``training_batchnorm`` (None otherwise; the model's
        statistics are then training's own)."""
        self.training_batchnorm = None
        if not recalibrate:
            self.bn_record = {"method": TRAINING_AVERAGES}
            return None
        training = batchnorm_buffers(self.model)
        with distributed.local_batchnorm(self.world, self.model):
            self.bn_record = recalibrate_batchnorm(
                self.model, self.train_set, self.cfg.batch_size, self.device, num_workers=self.cfg.num_workers,
                seed=self.cfg.seed, desc=f"epoch {epoch} BatchNorm statistics", show_progress=self.world.is_main)
        self.bn_record["over"] = ("the training set: mean and variance of each BatchNorm input over every pixel, "
                                  "no augmentation, quantizers active, Dropout off")
        self.bn_seconds += self.bn_record["seconds"]
        if differs(training, batchnorm_buffers(self.model)):
            self.training_batchnorm = training
        return training

    def _validate_deployed(self, protocol: dict[str, float], recalibrated: bool) -> dict[str, float]:
        """The validation figures of the model as its checkpoint deploys it: eval mode with the
        statistics the checkpoint holds. ``protocol`` itself when validation already ran so."""
        if self.cfg.val_bn_mode == "eval" and not recalibrated:
            return {k: protocol[k] for k in DEPLOYED_FIGURES}
        return self._validate_eval_mode(self.val_set)

    def _validate_eval_mode(self, val_set: Dataset) -> dict[str, float]:
        """``dice``, ``dice_std`` and ``val_loss`` of ``val_set`` in eval mode with the model's
        running statistics (rank 0's under torchrun); every global RNG is left as it was, so the
        extra pass draws nothing training would have drawn."""
        with preserved_rng(self.device):
            distributed.broadcast_buffers(self.world, self.model)
            summary, _, _ = evaluate(self.model, val_set, self.cfg, self.device, self.recipe.isbi_metrics,
                                     desc="validate (eval mode)", world=self.world, bn_mode="eval")
        return {k: summary[k] for k in DEPLOYED_FIGURES}

    def _eval_note(self, deployed: dict[str, float], recalibrated: bool) -> str:
        """`` (eval 90.90)`` after the epoch's Dice when the deployed model's figure differs in meaning."""
        if self.cfg.val_bn_mode == "eval" and not recalibrated:
            return ""
        return f" (eval {deployed['dice']:.2f})"

    def _eval_dice_at(self, epoch: int) -> float | None:
        """The eval-mode Dice logged for ``epoch`` (None for rows written before it was logged)."""
        for row in self.history:
            if int(row["epoch"]) == int(epoch):
                value = row.get("eval_dice")
                return float(value) if value not in (None, "") else None
        return None


__all__ = ["DEPLOYED_FIGURES", "ValidationSteps"]
