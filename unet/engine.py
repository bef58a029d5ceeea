"""The training engine shared by the EM, GM and NIH trainers (SPEC §5, §5.4).

A trainer supplies a :class:`Recipe` (its base config and dataset builders); :func:`run`
does everything else: run folder, device, seeding, model, the four operation modes,
checkpoints, metrics, logs and figures.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .config import Config, Key
from .errors import DataError, UserError
from .export.packed import float32_size_bytes, packed_size_bytes
from .fileio import atomic_path, atomic_write_text
from .losses import get_loss
from .metrics import BASE_METRICS, ISBI_METRICS, slice_metrics, summarize
from .model import UNet, quant_specs
from .plots import save_overlay_figure, save_weight_histograms
from .schedules import make_lr_scheduler, ternary_beta

#: Exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell convention).
EXIT_INTERRUPTED = 130
#: Exit status of a run stopped by a non-finite loss.
EXIT_DIVERGED = 3
N_OVERLAY_SAMPLES = 4
#: Keys that may differ between an interrupted run and the command that resumes it.
RESUME_FREE_KEYS = ("operation_mode", "gpu_core_num", "num_workers", "trained_model")


@dataclass(frozen=True)
class Recipe:
    """What makes a trainer dataset-specific.

    ``build_train``/``build_val`` turn the config into datasets whose items are
    ``(image, mask)`` float tensors of shape (1, H, W) (optionally with a
    ``sample_name(i)`` method); ``prepare_command`` is shown when the data is missing.
    """

    name: str
    base_config: Path
    build_train: Callable[[Config], Dataset]
    build_val: Callable[[Config], Dataset]
    prepare_command: str
    extra_keys: tuple[Key, ...] = ()
    isbi_metrics: bool = False


class TrainingDiverged(Exception):
    """The loss became NaN or infinite."""


# --- small pieces -------------------------------------------------------------------------


def build_model(cfg: Config) -> UNet:
    """The U-Net the config describes (SPEC §4)."""
    weight_quant, act_quant = quant_specs(
        cfg.quantization,
        cfg.activation_i_width,
        cfg.activation_f_width,
        cfg.weight_i_width,
        cfg.weight_f_width,
        cfg.fixed_rounding,
        cfg.fixed_overflow,
        cfg.pow2_min_exponent,
    )
    model = UNet(cfg.base_channels, weight_quant, act_quant, cfg.activation, cfg.dropout)
    return model.to(memory_format=torch.channels_last)  # ~10% faster steps on CPU: benchmarks/bench_training.py


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
    """The global RNG states, for exact resumption."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), # noqa: NPY002
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    tensors, :func:`unet.export.packed.packed_size_bytes`, against the same tensors in float32)."""
    params = sum(p.numel() for p in model.parameters())
    packed, full = packed_size_bytes(model), float32_size_bytes(model)
    return (
        f"model: U-Net, weights {model.weight_quant}, activations {model.act_quant}, {params:,} parameters, "
        f"weight memory {packed / 2**20:.3f} MiB packed (float32: {full / 2**20:.3f} MiB)"
    )


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, cfg: Config, generator: torch.Generator | None):
    """A DataLoader with the config's workers; shuffling draws from ``generator``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=cfg.num_workers,
        generator=generator,
        persistent_workers=cfg.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )


def _sample_name(dataset: Dataset, index: int) -> str:
    namer = getattr(dataset, "sample_name", None)
    return namer(index) if callable(namer) else f"val_{index:04d}"


# --- evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: UNet,
    dataset: Dataset,
    cfg: Config,
    device: torch.device,
    isbi: bool,
    desc: str = "validate",
) -> tuple[dict[str, float], list[dict[str, Any]], list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]:
    """One pass over ``dataset``: summary metrics (with ``val_loss``), per-slice rows and the
    overlay samples. BatchNorm runs in ``cfg.val_bn_mode`` (train mode also updates its
    running statistics, as the original EM code did)."""
    loss_fn = get_loss(cfg.loss)
    model.train(cfg.val_bn_mode == "train")
    loader = make_loader(dataset, cfg.val_batch_size, False, cfg, None)
    n = len(dataset)
    wanted = set(np.unique(np.linspace(0, n - 1, min(N_OVERLAY_SAMPLES, n)).round().astype(int)).tolist())
    rows: list[dict[str, Any]] = []
    samples = []
    loss_sum = 0.0
    index = 0
    for images, masks in tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=0.5):
        probs = model(images.to(device))
        loss_sum += float(loss_fn(probs, masks.to(device))) * images.shape[0]
        probs_np = probs.float().cpu().numpy()[:, 0]
        for k in range(images.shape[0]):
            truth = masks[k, 0].numpy()
            metrics = slice_metrics(probs_np[k], truth, cfg.threshold, cfg.empty_dice, isbi)
            rows.append({"index": index, "name": _sample_name(dataset, index), **metrics})
            if index in wanted:
                samples.append((_sample_name(dataset, index), images[k, 0].numpy(), truth, probs_np[k]))
            index += 1
    summary = summarize([{k: v for k, v in r.items() if k not in ("index", "name")} for r in rows])
    summary["val_loss"] = loss_sum / max(n, 1)
    return summary, rows, samples


# --- the run ------------------------------------------------------------------------------


class Run:
    """State of one invocation of a trainer."""

    def __init__(self, cfg: Config, recipe: Recipe, run_dir: Path, script: str) -> None:
        self.cfg = cfg
        self.recipe = recipe
        self.run_dir = run_dir
        self.script = script
        self.log = RunLog(run_dir / "train.log")
        self.device, device_note = select_device(cfg.gpu_core_num)
        self.log(f"{recipe.name} trainer, operation_mode {cfg.operation_mode}, run folder {run_dir}")
        self.log(device_note)
        seed_everything(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        self.log(describe_model(self.model))
        self.metric_names = BASE_METRICS + (ISBI_METRICS if recipe.isbi_metrics else ())

    # -- modes --

    def inference(self, checkpoint: Path) -> int:
        """Evaluate the validation set once with ``checkpoint``; print and save the metrics."""
        val_set = self.recipe.build_val(self.cfg)
        state = load_checkpoint(checkpoint)
        load_model_state(self.model, state["model"], checkpoint)
        self.log(f"loaded {checkpoint} (epoch {state.get('epoch', '?')}); evaluating {len(val_set)} slices")
        summary, rows, samples = evaluate(self.model, val_set, self.cfg, self.device, self.recipe.isbi_metrics)
        _write_csv(self.run_dir / "inference_slices.csv", rows)
        atomic_write_text(
            self.run_dir / "inference_metrics.json",
            json.dumps({"checkpoint": str(checkpoint), "epoch": state.get("epoch"), **summary}, indent=2) + "\n",
        )
        save_overlay_figure(self.run_dir / "inference_overlay.png", samples, self.cfg.threshold,
                            f"{self.cfg.experiment_name}: inference with {checkpoint.name}")
        self.log("inference: " + _format_metrics(summary, self.metric_names))
        self.log(f"wrote {self.run_dir / 'inference_metrics.json'} and inference_slices.csv")
        return 0

    def visualize(self, checkpoint: Path) -> int:
        """Plot every convolution's float and quantized weight distribution."""
        state = load_checkpoint(checkpoint)
        load_model_state(self.model, state["model"], checkpoint)
        path = self.run_dir / "weights.png"
        save_weight_histograms(path, self.model, f"{self.cfg.experiment_name} ({checkpoint.name}, "
                                                 f"epoch {state.get('epoch', '?')})")
        self.log(f"visualize: wrote {path}")
        return 0

    def train(self, init_checkpoint: Path | None = None, resume_state: dict[str, Any] | None = None) -> int:
        """normal / retrain / resume: train to ``num_epochs``, checkpointing every epoch.

        ``resume_state`` is the run folder's last.pt, already read, to continue from."""
        cfg = self.cfg
        train_set = self.recipe.build_train(cfg)
        val_set = self.recipe.build_val(cfg)
        self.log(f"data: {len(train_set)} training and {len(val_set)} validation slices from {cfg.dataset_path}")
        generator = torch.Generator().manual_seed(cfg.seed)
        optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        scheduler = make_lr_scheduler(optimizer, cfg.lr_scheduler, cfg.num_epochs)
        history: list[dict[str, Any]] = []
        best = {"dice": -math.inf, "epoch": 0}
        start_epoch = 0
        resume = resume_state is not None
        if resume:
            state = resume_state
            load_model_state(self.model, state["model"], self.run_dir / "last.pt")
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["loader_rng"])
            set_rng_state(state["rng"])
            history = state["history"]
            best = state["best"]
            start_epoch = state["epoch"]
            self.log(f"resuming after epoch {start_epoch} of {cfg.num_epochs}")
        elif init_checkpoint is not None:
            state = load_checkpoint(init_checkpoint)
            load_model_state(self.model, state["model"], init_checkpoint)
            self.log(f"retrain: weights from {init_checkpoint} (epoch {state.get('epoch', '?')}), fresh optimizer")
        if not resume:
            atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())
            self._save_last(0, optimizer, scheduler, generator, history, best)
        loader = make_loader(train_set, cfg.batch_size, True, cfg, generator)
        loss_fn = get_loss(cfg.loss)
        has_beta = self.model.beta() is not None
        epoch = start_epoch
        bar = tqdm(range(start_epoch + 1, cfg.num_epochs + 1), desc=self.cfg.experiment_name, unit="epoch",
                   initial=start_epoch, total=cfg.num_epochs, mininterval=0.5)
        try:
            for epoch in bar:
                started = time.perf_counter()
                if has_beta:
                    self.model.set_beta(ternary_beta(epoch, cfg.num_epochs))
                lr = optimizer.param_groups[0]["lr"]
                train_loss = self._train_epoch(epoch, loader, optimizer, loss_fn)
                summary, _, samples = evaluate(self.model, val_set, cfg, self.device, self.recipe.isbi_metrics)
                scheduler.step()
                row = {"epoch": epoch, "lr": lr, "beta": self.model.beta() if has_beta else "",
                       "train_loss": train_loss, "val_loss": summary["val_loss"], "dice": summary["dice"],
                       "dice_std": summary["dice_std"], **{m: summary[m] for m in self.metric_names[1:]},
                       "seconds": time.perf_counter() - started}
                history.append(row)
                if summary["dice"] > best["dice"]:
                    best = {"dice": summary["dice"], "epoch": epoch}
                    self._save_best(epoch, summary)
                self._save_last(epoch, optimizer, scheduler, generator, history, best)
                _write_csv(self.run_dir / "metrics.csv", history)
                if epoch % cfg.overlay_every == 0 or epoch == cfg.num_epochs:
                    save_overlay_figure(self.run_dir / "overlays" / f"epoch_{epoch:03d}.png", samples,
                                        cfg.threshold, f"{cfg.experiment_name}, epoch {epoch}")
                bar.set_postfix(dice=f"{summary['dice']:.2f}", best=f"{best['dice']:.2f}")
                self.log(f"epoch {epoch}/{cfg.num_epochs}  lr {lr:.3g}  train_loss {train_loss:.4f}  "
                         f"val_loss {summary['val_loss']:.4f}  dice {summary['dice']:.2f}  "
                         f"(best {best['dice']:.2f} @ {best['epoch']})  {row['seconds']:.1f}s")
        except KeyboardInterrupt:
            bar.close()
            self.log(f"interrupted during epoch {epoch}: {self.run_dir / 'last.pt'} holds the end of epoch "
                     f"{epoch - 1}. Continue with: python {self.script} -f <config> -t <top key> "
                     f"-o operation_mode=resume")
            return EXIT_INTERRUPTED
        except TrainingDiverged as exc:
            bar.close()
            self.log(f"error: {exc}; the checkpoints of the last good epoch are kept in {self.run_dir}")
            return EXIT_DIVERGED
        bar.close()
        atomic_write_text(self.run_dir / "summary.json", json.dumps({
            "finished": True, "best_dice": best["dice"], "best_epoch": best["epoch"],
            "num_epochs": cfg.num_epochs, "experiment_name": cfg.experiment_name,
            "total_seconds": sum(r["seconds"] for r in history)}, indent=2) + "\n")
        self.log(f"done: best val Dice {best['dice']:.2f} at epoch {best['epoch']}; results in {self.run_dir}")
        return 0

    # -- helpers --

    def _train_epoch(self, epoch: int, loader: DataLoader, optimizer, loss_fn) -> float:
        self.model.train()
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch} train", leave=False, unit="batch", mininterval=0.5)
        for batch, (images, masks) in enumerate(bar, 1):
            images = images.to(self.device, non_blocking=True)
            masks = masks.to(self.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            probs = self.model(images)
            if not bool(torch.isfinite(probs).all()):  # BCE refuses NaN input with a RuntimeError
                raise TrainingDiverged(f"the model output became NaN or infinite at epoch {epoch}, batch {batch}")
            loss = loss_fn(probs, masks)
            value = loss.item()
            if not math.isfinite(value):
                raise TrainingDiverged(f"the loss became {value} at epoch {epoch}, batch {batch}")
            loss.backward()
            optimizer.step()
            total += value * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{total / count:.4f}")
        return total / max(count, 1)

    def _model_state(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "epoch": epoch, "beta": self.model.beta(),
                "config": self.cfg.to_plain(), "dataset": self.recipe.name}

    def _save_best(self, epoch: int, summary: dict[str, float]) -> None:
        state = {**self._model_state(epoch), "metrics": summary}
        save_checkpoint(self.run_dir / "best.pt", state)
        target = self.cfg.trained_model
        if self.cfg.operation_mode == "normal" and target is not None:
            with atomic_path(target) as tmp:
                shutil.copyfile(self.run_dir / "best.pt", tmp)

    def _save_last(self, epoch, optimizer, scheduler, generator, history, best) -> None:
        save_checkpoint(self.run_dir / "last.pt", {
            **self._model_state(epoch), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "loader_rng": generator.get_state(), "rng": rng_state(), "history": history, "best": best})


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


def run(cfg: Config, recipe: Recipe, script: str, new_run: bool = False) -> int:
    """Carry out ``cfg.operation_mode``; return the process exit status.

    normal / retrain refuse a run folder that already holds a run unless ``new_run``
    (then the next free ``<name>-N`` folder is used); resume needs the folder's last.pt.
    """
    mode = cfg.operation_mode
    run_dir = Path(cfg.log_output_dir) / cfg.experiment_name
    checkpoint = Path(cfg.trained_model) if cfg.trained_model is not None else run_dir / "best.pt"
    if mode in ("normal", "retrain") and holds_run(run_dir):
        if not new_run:
            raise UserError(
                f"run folder {run_dir} already holds a run; continue it with -o operation_mode=resume, "
                f"choose another experiment_name, or pass --new-run to start {next_free_run_dir(run_dir).name}"
            )
        run_dir = next_free_run_dir(run_dir)
    resume_state = None
    if mode == "resume":
        if not (run_dir / "last.pt").is_file():
            raise UserError(f"nothing to resume: {run_dir / 'last.pt'} does not exist")
        resume_state = load_checkpoint(run_dir / "last.pt")
        saved = resume_state.get("config", {})
        changed = [k for k, v in cfg.to_plain().items() if k not in RESUME_FREE_KEYS and saved.get(k, v) != v]
        if changed:
            raise UserError(f"cannot resume {run_dir}: the config differs from the interrupted run in "
                            f"{', '.join(changed)}; restore those keys (the run's config.yaml has them)")
        if (run_dir / "summary.json").is_file():
            raise UserError(f"run {run_dir} already finished; nothing to resume")
    if mode in ("retrain", "inference", "visualize") and not checkpoint.is_file():
        raise DataError(f"checkpoint {checkpoint} does not exist; set trained_model to a best.pt "
                        "of an earlier run (or run operation_mode: normal first)")
    created = None if run_dir.exists() else _topmost_missing(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Ctrl-C and SIGTERM both raise KeyboardInterrupt, also when the process was started with
    # SIGINT ignored (as a non-interactive shell does for background jobs).
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    if threading_main():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        session = Run(cfg, recipe, run_dir, script)
        if mode == "inference":
            return session.inference(checkpoint)
        if mode == "visualize":
            return session.visualize(checkpoint)
        if mode == "retrain":
            return session.train(init_checkpoint=checkpoint)
        return session.train(resume_state=resume_state)
    except UserError:
        if created is not None and not (run_dir / "metrics.csv").exists():
            shutil.rmtree(created, ignore_errors=True)  # a failed start leaves no run folder behind
        raise
    finally:
        if threading_main():
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _topmost_missing(path: Path) -> Path:
    """The outermost folder of ``path`` that does not exist yet (what mkdir -p would create)."""
    while not path.parent.exists():
        path = path.parent
    return path


def threading_main() -> bool:
    """Whether this is the main thread (only it may install signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "Recipe", "Run", "build_model", "evaluate", "run"]
