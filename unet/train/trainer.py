"""The trainer: :class:`Run`, one invocation of a trainer in one of the operation modes, and its
epoch loop as a short list of named steps (SPEC §5). The steps live beside it:
:mod:`.train_epoch` (optimizer steps), :mod:`.validation` (protocol and deployed validation,
BatchNorm statistics), :mod:`.checkpoints` (best.pt, last.pt)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import distributed
from ..batchnorm import load_batchnorm_buffers
from ..checkpoint import (
    TRAINING_AVERAGES,
    deployment_warning,
    load_checkpoint,
    load_model_state,
    needs_deployment_warning,
)
from ..config import COMMON_KEYS, Config
from ..exitcodes import ExitCode
from ..fileio import atomic_write_text
from ..invocation import Invocation, resume_command
from ..losses import get_loss
from ..metrics import BASE_METRICS, ISBI_METRICS
from ..model import build_model
from ..plots import save_overlay_figure, save_weight_histograms
from ..progress import bar_disable
from ..recipe import Recipe
from ..schedules import make_lr_scheduler, ternary_beta
from .checkpoints import CheckpointSteps
from .reproducibility import seed_everything, select_device, set_rng_state
from .rundir import checkpoint_tag, new_run_id
from .runlog import RunLog, append_csv, describe_model, format_metrics, silent, write_csv
from .train_epoch import TrainingDiverged, TrainingSteps
from .validation import ValidationSteps

#: An overlay sample: name, image, ground truth, probabilities.
Sample = tuple[str, np.ndarray, np.ndarray, np.ndarray]


class Run(TrainingSteps, ValidationSteps, CheckpointSteps):
    """State of one invocation of a trainer."""

    #: The command line (set by :func:`unet.train.run`); hints are built from it.
    invocation: Invocation | None = None
    #: The checkpoint :func:`unet.train.run` already read (inference, visualize), so it is read once.
    preloaded: dict[str, Any] | None = None

    def __init__(self, cfg: Config, recipe: Recipe, run_dir: Path, script: str, run_id: str | None = None,
                 best_copy: Path | None = None, world: distributed.World = distributed.SINGLE,
                 stop: distributed.StopRequest | None = None) -> None:
        """``run_id`` identifies the run in its checkpoints (a new one when None); ``best_copy`` is
        where each new best model is also copied (normal mode's ``trained_model``). Under torchrun
        ``world`` is this process's rank (only rank 0 logs and writes) and ``stop`` the signal
        flag the ranks share."""
        self.cfg = cfg
        self.recipe = recipe
        self.run_dir = run_dir
        self.script = script
        self.run_id = run_id or new_run_id()
        self.best_copy = best_copy
        self.world = world
        self.stop = stop
        self.log = RunLog(run_dir / "train.log") if world.is_main else silent
        self.device, device_note = distributed.device(world) if world.distributed else select_device(cfg.gpu_core_num)
        self.log(f"{recipe.name} trainer, operation_mode {cfg.operation_mode}, run folder {run_dir}, "
                 f"run id {self.run_id}")
        self.log(device_note)
        seed_everything(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        self.log(describe_model(self.model))
        self.metric_names = BASE_METRICS + (ISBI_METRICS if recipe.isbi_metrics else ())
        #: How the BatchNorm statistics of the next checkpoint were made, and training's own
        #: moving averages when they differ from the checkpoint's (see _deployable_statistics).
        self.bn_record: dict[str, Any] = {"method": TRAINING_AVERAGES}
        self.bn_seconds = 0.0  # spent recomputing statistics in this process
        self.training_batchnorm: dict[str, torch.Tensor] | None = None

    # -- modes --

    def normal(self) -> int:
        """Train from scratch to ``num_epochs``, checkpointing every epoch."""
        self._prepare_training()
        self._start_fresh()
        return self._epoch_loop()

    def retrain(self, checkpoint: Path) -> int:
        """Train from ``checkpoint``'s weights with a fresh optimizer and schedules."""
        self._prepare_training()
        state = self._load_weights(checkpoint)
        self.log(f"retrain: weights from {checkpoint} (epoch {state.get('epoch', '?')}), fresh optimizer")
        self.cfg["trained_model"] = checkpoint.resolve()  # the run's config.yaml names its source
        self._start_fresh()
        return self._epoch_loop()

    def resume(self, state: dict[str, Any]) -> int:
        """Continue the run folder's interrupted run from its last.pt (``state``, already read)."""
        self._prepare_training()
        load_model_state(self.model, state["model"], self.run_dir / "last.pt")
        if isinstance(state.get("training_batchnorm"), dict):  # training goes on with the statistics it had
            load_batchnorm_buffers(self.model, state["training_batchnorm"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["loader_rng"])
        set_rng_state(state["rng"])
        self._restore_world_state(state)
        self.history = state["history"]
        self.best = state["best"]
        self.start_epoch = state["epoch"]
        self.log(f"resuming after epoch {self.start_epoch} of {self.cfg.num_epochs}")
        return self._epoch_loop()

    def inference(self, checkpoint: Path) -> int:
        """Evaluate the validation set once with ``checkpoint``; save the metrics under
        ``inference/<checkpoint>_t<threshold>_bn-<mode>/`` and add a row to ``inference.csv``."""
        cfg = self.cfg
        val_set = self.recipe.build_val(cfg)
        state = self._load_weights(checkpoint)
        self.log(f"loaded {checkpoint} (epoch {state.get('epoch', '?')}); evaluating {len(val_set)} slices")
        if needs_deployment_warning(state):
            self.log(deployment_warning(checkpoint, state))
        # first, before batch statistics overwrite the running ones
        deployed = self._validate_eval_mode(val_set) if cfg.val_bn_mode == "train" else None
        summary, rows, samples = self._validate(val_set)
        if deployed is not None:
            summary = {**summary, **{f"eval_{k}": v for k, v in deployed.items()}}
        if not self.world.is_main:
            return 0
        tag = f"{checkpoint_tag(checkpoint, self.run_dir)}_t{cfg.threshold}_bn-{cfg.val_bn_mode}"
        out = self.run_dir / "inference" / tag
        write_csv(out / "slices.csv", rows)
        record_ = {"checkpoint": str(checkpoint.resolve()), "epoch": state.get("epoch"), "threshold": cfg.threshold,
                   "val_bn_mode": cfg.val_bn_mode, "dataset_path": str(cfg.dataset_path), **summary}
        atomic_write_text(out / "metrics.json", json.dumps(record_, indent=2) + "\n")
        save_overlay_figure(out / "overlay.png", samples, cfg.threshold,
                            f"{cfg.experiment_name}: inference with {checkpoint.name}, "
                            f"BatchNorm {cfg.val_bn_mode} mode")
        append_csv(self.run_dir / "inference.csv", {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "folder": tag,
                                                     **record_})
        self.log("inference: " + format_metrics(summary, self.metric_names)
                 + ("" if deployed is None else f"; eval mode (the checkpoint's statistics, as deployed): dice "
                    f"{deployed['dice']:.2f} ± {deployed['dice_std']:.2f}"))
        self.log(f"wrote {out}/ (metrics.json, slices.csv, overlay.png) and a row of {self.run_dir / 'inference.csv'}")
        return 0

    def visualize(self, checkpoint: Path) -> int:
        """Plot every convolution's float and quantized weight distribution."""
        state = self._load_weights(checkpoint)
        if not self.world.is_main:
            return 0
        path = self.run_dir / f"weights_{checkpoint_tag(checkpoint, self.run_dir)}.png"
        save_weight_histograms(path, self.model, f"{self.cfg.experiment_name} ({checkpoint.name}, "
                                                 f"epoch {state.get('epoch', '?')})")
        self.log(f"visualize: wrote {path}")
        return 0

    # -- helpers --

    def resume_hint(self) -> str:
        """The command that resumes this run (from the invocation that started or resumed it)."""
        if self.invocation is None:
            return f"python {self.script} -f <config> -t <top key> -o operation_mode=resume"
        return resume_command(self.invocation, self.run_dir, self.cfg.experiment_name,
                              (*COMMON_KEYS, *self.recipe.extra_keys))

    def _load_weights(self, checkpoint: Path) -> dict[str, Any]:
        """Load ``checkpoint``'s weights into the model; return the whole checkpoint."""
        state = self.preloaded or load_checkpoint(checkpoint, self.cfg.allow_unsafe_checkpoint)
        load_model_state(self.model, state["model"], checkpoint)
        return state

    def _prepare_training(self) -> None:
        """Datasets, optimizer, schedules and loader RNG of a run at epoch 0."""
        cfg = self.cfg
        self.train_set = self.recipe.build_train(cfg)
        self.val_set = self.recipe.build_val(cfg)
        self.log(f"data: {len(self.train_set)} training and {len(self.val_set)} validation slices from "
                 f"{cfg.dataset_path}")
        self._prepare_world()
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = make_lr_scheduler(self.optimizer, cfg.lr_scheduler, cfg.num_epochs)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"dice": -math.inf, "epoch": 0}
        self.start_epoch = 0

    def _start_fresh(self) -> None:
        """A new run's config.yaml and epoch-0 last.pt."""
        if self.world.is_main:
            atomic_write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        self._save_last(0)

    # -- the epoch loop --

    def _epoch_loop(self) -> int:
        """Train from ``start_epoch`` to ``num_epochs``; the exit status (0, interrupted, diverged)."""
        cfg = self.cfg
        loader = self._train_loader()
        loss_fn = get_loss(cfg.loss)
        epoch = self.start_epoch
        bar = tqdm(range(self.start_epoch + 1, cfg.num_epochs + 1), desc=cfg.experiment_name, unit="epoch",
                   initial=self.start_epoch, total=cfg.num_epochs, mininterval=0.5,
                   disable=bar_disable(hide=not self.world.is_main))
        try:
            for epoch in bar:
                self._epoch(epoch, loader, loss_fn)
                bar.set_postfix(dice=f"{self.history[-1]['dice']:.2f}", best=f"{self.best['dice']:.2f}")
        except KeyboardInterrupt:
            bar.close()
            self.log(f"interrupted during epoch {epoch}: {self.run_dir / 'last.pt'} holds the end of epoch "
                     f"{epoch - 1}. Continue with: {self.resume_hint()}")
            return ExitCode.INTERRUPTED
        except TrainingDiverged as exc:
            bar.close()
            self.log(f"error: {exc}; the checkpoints of the last good epoch are kept in {self.run_dir}")
            return ExitCode.DIVERGED
        bar.close()
        return self._finish()

    def _epoch(self, epoch: int, loader: DataLoader, loss_fn: Any) -> None:
        """One epoch: train, validate (the protocol), step the LR, recompute the BatchNorm statistics
        the checkpoints deploy, validate the model as deployed, save the checkpoints, log."""
        started = time.perf_counter()
        self._anneal_beta(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self._train_epoch(epoch, loader, self.optimizer, loss_fn)
        summary, _, samples = self._validate(self.val_set)
        self.scheduler.step()
        recalibrate = self._recalibrates(epoch, improved=summary["dice"] > self.best["dice"])
        training_statistics = self._deployable_statistics(epoch, recalibrate)
        deployed = self._validate_deployed(summary, recalibrate)
        row = self._record_epoch(epoch, lr, train_loss, summary, deployed, started)
        self._save_checkpoints(epoch, summary, deployed)
        if training_statistics is not None:  # training goes on with the moving averages it had
            load_batchnorm_buffers(self.model, training_statistics)
        self._log_epoch(row, summary, samples, deployed, recalibrate)

    def _anneal_beta(self, epoch: int) -> None:
        """Set the TernaryTanh activations' beta for ``epoch`` (models that have one)."""
        if self.model.beta() is not None:
            self.model.set_beta(ternary_beta(epoch, self.cfg.num_epochs))

    def _record_epoch(self, epoch: int, lr: float, train_loss: float, summary: dict[str, float],
                      deployed: dict[str, float], started: float) -> dict[str, Any]:
        """Add the epoch's row (the columns of metrics.csv) to the history; return it."""
        beta = self.model.beta()
        row = {"epoch": epoch, "lr": lr, "beta": beta if beta is not None else "",
               "train_loss": train_loss, "val_loss": summary["val_loss"], "dice": summary["dice"],
               "dice_std": summary["dice_std"], **{m: summary[m] for m in self.metric_names[1:]},
               "eval_dice": deployed["dice"], "eval_dice_std": deployed["dice_std"],
               "eval_val_loss": deployed["val_loss"],
               "seconds": time.perf_counter() - started}
        self.history.append(row)
        return row

    def _save_checkpoints(self, epoch: int, summary: dict[str, float], deployed: dict[str, float]) -> None:
        """A new best (best.pt and its copy) when the Dice improved, then last.pt."""
        if summary["dice"] > self.best["dice"]:
            self.best = {"dice": summary["dice"], "epoch": epoch}
            self._save_best(epoch, {**summary, **{f"eval_{k}": v for k, v in deployed.items()}})
        self._save_last(epoch)

    def _log_epoch(self, row: dict[str, Any], summary: dict[str, float], samples: list[Sample],
                   deployed: dict[str, float], recalibrated: bool) -> None:
        """metrics.csv, the overlay figure every ``overlay_every`` epochs and at the end, the log line (rank 0)."""
        if not self.world.is_main:
            return
        cfg, epoch, lr, train_loss = self.cfg, row["epoch"], row["lr"], row["train_loss"]
        write_csv(self.run_dir / "metrics.csv", self.history)
        if epoch % cfg.overlay_every == 0 or epoch == cfg.num_epochs:
            save_overlay_figure(self.run_dir / "overlays" / f"epoch_{epoch:03d}.png", samples,
                                cfg.threshold, f"{cfg.experiment_name}, epoch {epoch}")
        eval_note = self._eval_note(deployed, recalibrated)
        self.log(f"epoch {epoch}/{cfg.num_epochs}  lr {lr:.3g}  train_loss {train_loss:.4f}  "
                 f"val_loss {summary['val_loss']:.4f}  dice {summary['dice']:.2f}{eval_note}  "
                 f"(best {self.best['dice']:.2f} @ {self.best['epoch']})  {row['seconds']:.1f}s")

    def _finish(self) -> int:
        """summary.json (which marks the run finished) and the closing log line."""
        best = self.best
        if not self.world.is_main:
            return 0
        atomic_write_text(self.run_dir / "summary.json", json.dumps({
            "finished": True, "best_dice": best["dice"], "best_epoch": best["epoch"],
            "best_eval_dice": self._eval_dice_at(best["epoch"]), "val_bn_mode": self.cfg.val_bn_mode,
            "bn_recalibration": self.cfg.bn_recalibration, "bn_recalibration_seconds": self.bn_seconds,
            "num_epochs": self.cfg.num_epochs, "experiment_name": self.cfg.experiment_name,
            "total_seconds": sum(r["seconds"] for r in self.history)}, indent=2) + "\n")
        deployed = self._eval_dice_at(best["epoch"])
        note = "" if deployed is None or self.cfg.val_bn_mode == "eval" and self.cfg.bn_recalibration == "false" else (
            f" (eval mode with the checkpoint's BatchNorm statistics: {deployed:.2f})")
        self.log(f"done: best val Dice {best['dice']:.2f} at epoch {best['epoch']}{note}; results in {self.run_dir}")
        return 0


__all__ = ["Run"]
