"""The training engine shared by the EM, GM and NIH trainers (SPEC §5, §5.4).

A trainer supplies a :class:`Recipe` (its base config and dataset builders); :func:`run`
does everything else: run folder, device, seeding, model, the four operation modes,
checkpoints, metrics, logs and figures.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from . import distributed
from .batchnorm import (
    TRAINING_AVERAGES,
    batchnorm_buffers,
    deployment_warning,
    differs,
    load_batchnorm_buffers,
    needs_deployment_warning,
    preserved_rng,
    recalibrate_batchnorm,
)
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .config import COMMON_KEYS, Config
from .errors import DataError, UserError
from .fileio import atomic_path, atomic_write_text, check_writable_dir, remove_stale_temporaries, removed_note
from .input_transform import input_transform_record
from .interrupts import Interrupted
from .invocation import Invocation, record, recorded, resume_command
from .lock import FolderLock
from .losses import get_loss
from .memory import describe_memory
from .metrics import BASE_METRICS, ISBI_METRICS, slice_metrics, summarize
from .model import UNet, build_model
from .plots import save_overlay_figure, save_weight_histograms
from .precision import autocast, grad_scaler
from .progress import bar_disable
from .recipe import Recipe
from .schedules import make_lr_scheduler, ternary_beta
from .trained import TrainedModel

#: Exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell convention).
EXIT_INTERRUPTED = 130
#: Exit status of a run stopped by a non-finite loss.
EXIT_DIVERGED = 3
N_OVERLAY_SAMPLES = 4
#: The validation figures logged for the model as deployed (``eval_<name>`` in metrics.csv).
DEPLOYED_FIGURES = ("dice", "dice_std", "val_loss")
#: Keys that may differ between an interrupted run and the command that resumes it.
RESUME_FREE_KEYS = ("operation_mode", "gpu_core_num", "num_workers", "trained_model", "allow_unsafe_checkpoint")


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


# --- small pieces -------------------------------------------------------------------------


def select_device(gpu_core_num: int | None) -> tuple[torch.device, str]:
    """``cuda:<gpu_core_num>`` (``cuda:0`` when unset) if CUDA is available, else the CPU,
    with a sentence saying which and why."""
    if torch.cuda.is_available():
        index = 0 if gpu_core_num is None else gpu_core_num
        if index >= torch.cuda.device_count():
            raise UserError(f"gpu_core_num {index} does not exist: {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{index}"), f"device: cuda:{index} ({torch.cuda.get_device_name(index)})"
    reason = "CUDA is not available" if gpu_core_num is not None else "no CUDA device"
    return torch.device("cpu"), f"device: CPU ({reason}; {torch.get_num_threads()} threads)"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's RNGs (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global RNG, for code that uses it
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states, for exact resumption, as lists, numbers and tensors only (what
    ``weights_only`` checkpoint loading accepts).

    ``python``: ``[version, [625 ints], gauss_next]`` of :func:`random.getstate`; ``numpy``:
    ``{"keys": [624 uint32 as ints], "pos", "has_gauss", "cached_gaussian"}`` of the legacy
    MT19937 state; ``torch`` (and ``cuda``): byte tensors.
    """
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # noqa: NPY002 - MT19937
    state = {"python": [version, list(internal), gauss_next],
             "numpy": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state` exactly (also the tuples that checkpoints
    written before weights-only loading stored)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = ("MT19937", np.array(numpy["keys"], dtype=np.uint32), numpy["pos"], numpy["has_gauss"],
                 numpy["cached_gaussian"])
    np.random.set_state(numpy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_id() -> str:
    """A fresh run id (uuid4 hex) that every checkpoint of the run carries as ``run_id``."""
    import uuid

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


class RunLog:
    """Messages to the console (above the progress bars) and to the run's text log."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        tqdm.write(message, file=sys.stdout)
        if self.path is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(f"{stamp}  {message}\n")


def describe_model(model: UNet) -> str:
    """One line: quantization formats, parameter count and weight memory (the packed export's
    tensors, :func:`unet.memory.packed_size_bytes`, against the same tensors in float32)."""
    params = sum(p.numel() for p in model.parameters())
    return (f"model: U-Net, weights {model.weight_quant}, activations {model.act_quant}, {params:,} parameters, "
            f"{describe_memory(model)}")


def loader_options(cfg: Config) -> dict[str, Any]:
    """The DataLoader settings every loader shares: the config's workers, pinned memory on CUDA."""
    return {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0,
            "pin_memory": torch.cuda.is_available()}


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, cfg: Config, generator: torch.Generator | None):
    """A DataLoader with the config's workers; shuffling draws from ``generator``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **loader_options(cfg))


def validation_batches(n: int, batch_size: int, world: distributed.World = distributed.SINGLE) -> list[list[int]]:
    """The validation batches this rank evaluates, as sample indices: the single-process batches
    ``[0, B), [B, 2B), ...`` of ``batch_size`` B over ``n`` samples, rank r of W taking batches
    r, r + W, r + 2W, ... (whole batches, the last one short, nothing repeated)."""
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    return batches[world.rank :: world.size]


def _sample_name(dataset: Dataset, index: int) -> str:
    namer = getattr(dataset, "sample_name", None)
    return namer(index) if callable(namer) else f"val_{index:04d}"


# --- evaluation ---------------------------------------------------------------------------


def set_validation_mode(model: torch.nn.Module, batchnorm_train: bool) -> None:
    """Put ``model`` in eval mode (Dropout off), then its BatchNorm layers in train mode (batch
    statistics, running statistics updated) when ``batchnorm_train``."""
    model.eval()
    if batchnorm_train:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.train()


@torch.no_grad()
def evaluate(
    model: UNet,
    dataset: Dataset,
    cfg: Config,
    device: torch.device,
    isbi: bool,
    desc: str = "validate",
    world: distributed.World = distributed.SINGLE,
    bn_mode: str | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]], list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """One pass over ``dataset``: summary metrics (with ``val_loss``), per-slice rows and the
    overlay samples. BatchNorm runs in ``bn_mode`` (``cfg.val_bn_mode`` when None; train mode
    also updates its running statistics, as the original EM code did); Dropout is always off.

    In a distributed ``world`` each rank evaluates its share of the single-process batches
    (:func:`validation_batches`) and every rank returns all rows, in order, so the metrics equal
    a single process's; ``val_loss`` sums the per-batch losses in the same order."""
    loss_fn = get_loss(cfg.loss)
    set_validation_mode(model, batchnorm_train=(bn_mode or cfg.val_bn_mode) == "train")
    n = len(dataset)
    batches = validation_batches(n, cfg.val_batch_size, world)
    loader = DataLoader(dataset, batch_sampler=batches, **loader_options(cfg))
    wanted = set(np.unique(np.linspace(0, n - 1, min(N_OVERLAY_SAMPLES, n)).round().astype(int)).tolist())
    rows: list[dict[str, Any]] = []
    samples = []
    sample_at: list[int] = []
    batch_losses: list[tuple[int, float]] = []
    bar = tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=0.5,
               disable=bar_disable(hide=not world.is_main))
    for indices, (images, masks) in zip(batches, bar, strict=True):
        probs = model(images.to(device))
        batch_losses.append((indices[0], float(loss_fn(probs.float(), masks.to(device))) * images.shape[0]))
        probs_np = probs.float().cpu().numpy()[:, 0]
        for k, index in enumerate(indices):
            truth = masks[k, 0].numpy()
            metrics = slice_metrics(probs_np[k], truth, cfg.threshold, cfg.empty_dice, isbi)
            rows.append({"index": index, "name": _sample_name(dataset, index), **metrics})
            if index in wanted:
                samples.append((_sample_name(dataset, index), images[k, 0].numpy(), truth, probs_np[k]))
                sample_at.append(index)
    if world.distributed:
        rows, samples, batch_losses = _gather_validation(world, rows, list(zip(sample_at, samples, strict=True)),
                                                         batch_losses)
    loss_sum = 0.0
    for _, loss in batch_losses:
        loss_sum += loss
    summary = summarize([{k: v for k, v in r.items() if k not in ("index", "name")} for r in rows])
    summary["val_loss"] = loss_sum / max(n, 1)
    return summary, rows, samples


def _gather_validation(world: distributed.World, rows: list, samples: list, batch_losses: list) -> tuple:
    """Every rank's rows, overlay samples (``(index, sample)`` pairs) and per-batch losses
    (``(first index, loss sum)``), in the single-process order."""
    gathered = distributed.all_gather(world, (rows, samples, batch_losses))
    rows = sorted((r for part in gathered for r in part[0]), key=lambda r: r["index"])
    samples = [s for _, s in sorted((pair for part in gathered for pair in part[1]), key=lambda p: p[0])]
    batch_losses = sorted((b for part in gathered for b in part[2]), key=lambda b: b[0])
    return rows, samples, batch_losses


# --- the run ------------------------------------------------------------------------------


class Run:
    """State of one invocation of a trainer."""

    #: The command line (set by :func:`run`); hints are built from it.
    invocation: Invocation | None = None
    #: The checkpoint :func:`run` already read (inference, visualize), so it is read once.
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
        self.log = RunLog(run_dir / "train.log") if world.is_main else _silent
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
        _write_csv(out / "slices.csv", rows)
        record_ = {"checkpoint": str(checkpoint.resolve()), "epoch": state.get("epoch"), "threshold": cfg.threshold,
                   "val_bn_mode": cfg.val_bn_mode, "dataset_path": str(cfg.dataset_path), **summary}
        atomic_write_text(out / "metrics.json", json.dumps(record_, indent=2) + "\n")
        save_overlay_figure(out / "overlay.png", samples, cfg.threshold,
                            f"{cfg.experiment_name}: inference with {checkpoint.name}, "
                            f"BatchNorm {cfg.val_bn_mode} mode")
        _append_csv(self.run_dir / "inference.csv", {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "folder": tag,
                                                     **record_})
        self.log("inference: " + _format_metrics(summary, self.metric_names)
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

    def _resume_hint(self) -> str:
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
                     f"{epoch - 1}. Continue with: {self._resume_hint()}")
            return EXIT_INTERRUPTED
        except TrainingDiverged as exc:
            bar.close()
            self.log(f"error: {exc}; the checkpoints of the last good epoch are kept in {self.run_dir}")
            return EXIT_DIVERGED
        bar.close()
        return self._finish()

    def _epoch(self, epoch: int, loader: DataLoader, loss_fn) -> None:
        """Train one epoch, validate, step the LR, then write checkpoints, metrics and overlays."""
        cfg = self.cfg
        started = time.perf_counter()
        has_beta = self.model.beta() is not None
        if has_beta:
            self.model.set_beta(ternary_beta(epoch, cfg.num_epochs))
        lr = self.optimizer.param_groups[0]["lr"]
        train_loss = self._train_epoch(epoch, loader, self.optimizer, loss_fn)
        summary, _, samples = self._validate(self.val_set)
        self.scheduler.step()
        recalibrate = self._recalibrates(epoch, improved=summary["dice"] > self.best["dice"])
        training_statistics = self._deployable_statistics(epoch, recalibrate)
        deployed = self._validate_deployed(summary, recalibrate)
        row = {"epoch": epoch, "lr": lr, "beta": self.model.beta() if has_beta else "",
               "train_loss": train_loss, "val_loss": summary["val_loss"], "dice": summary["dice"],
               "dice_std": summary["dice_std"], **{m: summary[m] for m in self.metric_names[1:]},
               "eval_dice": deployed["dice"], "eval_dice_std": deployed["dice_std"],
               "eval_val_loss": deployed["val_loss"],
               "seconds": time.perf_counter() - started}
        self.history.append(row)
        if summary["dice"] > self.best["dice"]:
            self.best = {"dice": summary["dice"], "epoch": epoch}
            self._save_best(epoch, {**summary, **{f"eval_{k}": v for k, v in deployed.items()}})
        self._save_last(epoch)
        if training_statistics is not None:  # training goes on with the moving averages it had
            load_batchnorm_buffers(self.model, training_statistics)
        if not self.world.is_main:
            return
        _write_csv(self.run_dir / "metrics.csv", self.history)
        if epoch % cfg.overlay_every == 0 or epoch == cfg.num_epochs:
            save_overlay_figure(self.run_dir / "overlays" / f"epoch_{epoch:03d}.png", samples,
                                cfg.threshold, f"{cfg.experiment_name}, epoch {epoch}")
        eval_note = self._eval_note(deployed, recalibrate)
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

    def _train_epoch(self, epoch: int, loader: DataLoader, optimizer, loss_fn) -> float:
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

    def _train_step(self, images: torch.Tensor, masks: torch.Tensor, optimizer, loss_fn, where: str) -> float:
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

    # -- under torchrun (a single process passes through these unchanged) --

    def _prepare_world(self) -> None:
        """The module a training step calls (``self.model``, DDP-wrapped under torchrun), the
        per-rank RNG streams (``seed + rank``: dropout and augmentation differ between ranks) and
        the GradScaler of ``precision: 16-mixed``."""
        self.net = distributed.wrap(self.model, self.world, self.device, self.cfg.sync_batchnorm)
        if self.world.distributed:
            seed_everything(self.cfg.seed + self.world.rank)
        self.scaler = grad_scaler(self.device, self.cfg.precision)

    def _train_loader(self) -> DataLoader:
        """The training loader: shuffled by the run's generator, or under torchrun this rank's share
        of a DistributedSampler (seeded with ``seed``, reshuffled by ``set_epoch`` every epoch) in
        batches of ``batch_size / world size``."""
        cfg, world = self.cfg, self.world
        if not world.distributed:
            return make_loader(self.train_set, cfg.batch_size, True, cfg, self.generator)
        sampler = DistributedSampler(self.train_set, world.size, world.rank, shuffle=True, seed=cfg.seed)
        return DataLoader(self.train_set, batch_size=cfg.batch_size // world.size, sampler=sampler,
                          **loader_options(cfg))

    def _validate(self, val_set: Dataset) -> tuple[dict[str, float], list[dict[str, Any]], list]:
        """:func:`evaluate` over ``val_set``; under torchrun every rank first takes rank 0's BatchNorm
        statistics (what its checkpoints hold) and evaluates its share of the batches."""
        distributed.broadcast_buffers(self.world, self.model)
        with distributed.local_batchnorm(self.world, self.model):
            return evaluate(self.model, val_set, self.cfg, self.device, self.recipe.isbi_metrics, world=self.world)

    def _stop_with_every_rank(self, problem: str | None, where: str) -> None:
        """Share this rank's NaN finding and stop request with the others (one all-reduce) and
        raise the same on every rank: TrainingDiverged, or KeyboardInterrupt."""
        requested = self.stop is not None and self.stop.requested
        diverged, stop = distributed.any_rank(self.world, (problem is not None, requested), self.device)
        if diverged:
            raise TrainingDiverged(problem or f"the loss became NaN or infinite on another rank {where}")
        if stop:
            raise KeyboardInterrupt

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

    def _model_state(self, epoch: int) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "epoch": epoch, "beta": self.model.beta(),
                 "config": self.cfg.to_plain(), "dataset": self.recipe.name, "run_id": self.run_id,
                 "input_transform": input_transform_record(self.cfg, self.recipe.name),
                 "batchnorm_statistics": {**self.bn_record, "epoch": epoch}}
        if self.training_batchnorm is not None:
            state["training_batchnorm"] = self.training_batchnorm
        return state

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

    def _save_best(self, epoch: int, summary: dict[str, float]) -> None:
        if not self.world.is_main:
            return
        state = {**self._model_state(epoch), "metrics": summary}
        save_checkpoint(self.run_dir / "best.pt", state)
        if self.best_copy is not None:
            with atomic_path(self.best_copy) as tmp:
                shutil.copyfile(self.run_dir / "best.pt", tmp)

    def _save_last(self, epoch: int) -> None:
        extra = self._world_state()
        if not self.world.is_main:
            return
        save_checkpoint(self.run_dir / "last.pt", {
            **self._model_state(epoch), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "loader_rng": self.generator.get_state(), "rng": rng_state(),
            "history": self.history, "best": self.best, **extra})


def _format_metrics(summary: dict[str, float], names: tuple[str, ...]) -> str:
    parts = [f"dice {summary['dice']:.2f} ± {summary['dice_std']:.2f}"]
    parts += [f"{name} {summary[name]:.4g}" for name in names[1:]]
    parts.append(f"val_loss {summary['val_loss']:.4f} over {int(summary['n_slices'])} slices")
    return ", ".join(parts)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _raise_on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def _silent(message: str) -> None:
    """The log of a rank other than 0: rank 0 says everything once."""


def _install_stop_handlers(stop: distributed.StopRequest | None) -> None:
    """Ctrl-C and SIGTERM both raise KeyboardInterrupt, also when the process was started with
    SIGINT ignored (as a non-interactive shell does for background jobs); under torchrun they
    set ``stop`` instead, which every rank checks at the next batch."""
    if stop is not None:
        stop.install()
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)


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
    made = None if not world.is_main or run_dir.parent.exists() else _topmost_missing(run_dir.parent)
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
    resume_state = None
    if mode == "resume":
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
                            + _finished_alternatives(run_dir, cfg, recipe, invocation))
    if world.is_main and run_dir.is_dir():  # the lock makes the folder ours: a killed write's leftovers go
        removed = remove_stale_temporaries(run_dir, recursive=True)
        if removed:
            print(removed_note(removed, f"an interrupted write left in {run_dir}"), file=sys.stderr)
    run_id = (resume_state or {}).get("run_id") or new_run_id()
    best_copy = _best_model_copy(cfg, resume_state, run_id, overwrite_trained_model)
    if mode in ("retrain", "inference", "visualize") and not checkpoint.is_file():
        raise DataError(f"checkpoint {checkpoint} does not exist; set trained_model to a best.pt "
                        "of an earlier run (or run operation_mode: normal first)")
    preloaded = None
    if mode in ("inference", "visualize"):
        trained = TrainedModel.load(checkpoint, cfg, defaults_source=str(recipe.base_config),
                                    allow_unsafe=cfg.allow_unsafe_checkpoint)
        preloaded, cfg = trained.state, trained.config
    distributed.barrier(world)  # every rank has checked the folder before rank 0 writes to it
    created = None if run_dir.exists() or not world.is_main else _topmost_missing(run_dir)
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
        if mode == "inference":
            return session.inference(checkpoint)
        if mode == "visualize":
            return session.visualize(checkpoint)
        if mode == "retrain":
            return session.retrain(checkpoint)
        if mode == "resume":
            return session.resume(resume_state)
        return session.normal()
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


#: Write errors a user fixes (full disk or quota, read-only file system): one line, not a traceback.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


def _continue_hint(run_dir: Path, session: Run | None) -> str:
    """How to go on after a stop: resume from last.pt when there is one, else start again."""
    if not (run_dir / "last.pt").is_file():
        return "; there is no checkpoint to resume from yet: fix that and run the same command again"
    command = session._resume_hint() if session is not None else "-o operation_mode=resume"
    return f"; last.pt holds the last completed epoch: fix that and continue with: {command}"


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
        return f"run folder {run_dir} already holds a finished run; " + _finished_alternatives(
            run_dir, cfg, recipe, invocation)
    done = _logged_epochs(run_dir)
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


def _finished_alternatives(run_dir: Path, cfg: Config, recipe: Recipe, invocation: Invocation | None) -> str:
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


def _logged_epochs(run_dir: Path) -> int:
    """Rows of ``run_dir/metrics.csv`` (0 when absent)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0
    with open(path, encoding="utf-8") as handle:
        return max(sum(1 for line in handle if line.strip()) - 1, 0)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` to the CSV at ``path`` (atomically rewritten); new columns extend the header."""
    rows = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    fields = list(rows[0]) if rows else []
    fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows([*rows, row])
    atomic_write_text(path, buffer.getvalue())


def _best_model_copy(cfg: Config, resume_state: dict[str, Any] | None, run_id: str, overwrite: bool) -> Path | None:
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


def _topmost_missing(path: Path) -> Path:
    """The outermost folder of ``path`` that does not exist yet (what mkdir -p would create)."""
    while not path.parent.exists():
        path = path.parent
    return path


def threading_main() -> bool:
    """Whether this is the main thread (only it may install signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "Run", "build_model", "evaluate", "run"]
