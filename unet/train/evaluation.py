"""Evaluation of a model on a validation set (SPEC §5.4): the validation mode, the batches each
rank evaluates, the metrics, per-slice rows and overlay samples, gathered across ranks."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .. import distributed
from ..config import Config
from ..losses import get_loss
from ..metrics import slice_metrics, summarize
from ..model import UNet
from ..progress import bar_disable
from .loaders import loader_options

#: How many validation samples the overlay figures show (evenly spaced over the set).
N_OVERLAY_SAMPLES = 4


def validation_batches(n: int, batch_size: int, world: distributed.World = distributed.SINGLE) -> list[list[int]]:
    """The validation batches this rank evaluates, as sample indices: the single-process batches
    ``[0, B), [B, 2B), ...`` of ``batch_size`` B over ``n`` samples, rank r of W taking batches
    r, r + W, r + 2W, ... (whole batches, the last one short, nothing repeated)."""
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    return batches[world.rank :: world.size]


def sample_name(dataset: Dataset, index: int) -> str:
    """The name of sample ``index``: the dataset's ``sample_name(index)`` when it has one, else ``val_<index>``."""
    namer = getattr(dataset, "sample_name", None)
    return namer(index) if callable(namer) else f"val_{index:04d}"


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
            rows.append({"index": index, "name": sample_name(dataset, index), **metrics})
            if index in wanted:
                samples.append((sample_name(dataset, index), images[k, 0].numpy(), truth, probs_np[k]))
                sample_at.append(index)
    if world.distributed:
        rows, samples, batch_losses = gather_validation(world, rows, list(zip(sample_at, samples, strict=True)),
                                                        batch_losses)
    loss_sum = 0.0
    for _, loss in batch_losses:
        loss_sum += loss
    summary = summarize([{k: v for k, v in r.items() if k not in ("index", "name")} for r in rows])
    summary["val_loss"] = loss_sum / max(n, 1)
    return summary, rows, samples


def gather_validation(world: distributed.World, rows: list, samples: list, batch_losses: list) -> tuple:
    """Every rank's rows, overlay samples (``(index, sample)`` pairs) and per-batch losses
    (``(first index, loss sum)``), in the single-process order."""
    gathered = distributed.all_gather(world, (rows, samples, batch_losses))
    rows = sorted((r for part in gathered for r in part[0]), key=lambda r: r["index"])
    samples = [s for _, s in sorted((pair for part in gathered for pair in part[1]), key=lambda p: p[0])]
    batch_losses = sorted((b for part in gathered for b in part[2]), key=lambda b: b[0])
    return rows, samples, batch_losses


__all__ = ["N_OVERLAY_SAMPLES", "evaluate", "gather_validation", "sample_name", "set_validation_mode",
           "validation_batches"]
