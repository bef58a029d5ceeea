"""BatchNorm statistics recomputed for the weights they go with.

During training every BatchNorm keeps exponential moving averages of its batch statistics
(momentum 0.1). After a few steps per epoch they lag the weights, and a model validated with
batch statistics (``val_bn_mode: train``, the EM recipe) can score far lower once it is deployed
with its running statistics. :func:`recalibrate_batchnorm` replaces the running statistics by
their average over the whole training set with the current weights; :func:`batchnorm_buffers`
and :func:`load_batchnorm_buffers` keep the statistics training goes on with.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .progress import bar_disable

#: The ``batchnorm_statistics`` record of a checkpoint whose statistics are training's moving averages.
TRAINING_AVERAGES = "training moving averages"
#: The record's ``method`` when :func:`recalibrate_batchnorm` made the statistics.
RECALIBRATED = "recalibrated"
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """Every BatchNorm layer of ``model`` with its qualified name (``enc1.0.bn``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def batchnorm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked``,
    keyed as in ``model.state_dict()`` (on the CPU)."""
    out = {}
    for name, layer in batchnorm_layers(model):
        for buffer in _BUFFERS:
            value = getattr(layer, buffer)
            if value is not None:
                out[f"{name}.{buffer}"] = value.detach().cpu().clone()
    return out


def load_batchnorm_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Copy ``buffers`` (as :func:`batchnorm_buffers` returns them) into ``model`` in place.

    ``KeyError`` when a BatchNorm buffer of the model is missing from ``buffers``."""
    with torch.no_grad():
        for name, layer in batchnorm_layers(model):
            for buffer in _BUFFERS:
                target = getattr(layer, buffer)
                if target is not None:
                    target.copy_(buffers[f"{name}.{buffer}"])


def differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two buffer sets differ anywhere (bit for bit)."""
    return a.keys() != b.keys() or any(not torch.equal(a[k], b[k].to(a[k].device)) for k in a)


def deterministic_view(dataset: Dataset) -> Dataset:
    """``dataset`` without its random augmentation: a shallow copy with ``augment = False`` for
    datasets that have the attribute (the GM reader), else ``dataset`` itself."""
    if getattr(dataset, "augment", False):
        view = copy.copy(dataset)
        view.augment = False
        return view
    return dataset


@contextmanager
def _batchnorm_only_training(model: nn.Module) -> Iterator[list[nn.modules.batchnorm._BatchNorm]]:
    """Inside: the model in eval mode (Dropout off) but its BatchNorm layers in training mode with
    ``momentum=None`` (cumulative average); afterwards every module's mode and momentum as before."""
    modes = {m: m.training for m in model.modules()}
    layers = [m for _, m in batchnorm_layers(model)]
    momenta = [m.momentum for m in layers]
    model.eval()
    for layer in layers:
        layer.train()
        layer.momentum = None
    try:
        yield layers
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                          augment: bool = False, num_workers: int = 0, desc: str = "BatchNorm statistics",
                          show_progress: bool = True) -> dict[str, Any]:
    """Set every BatchNorm's running statistics to their average over ``dataset`` with the
    model's current weights; return the record a checkpoint stores.

    For each BatchNorm layer, over the B batches b of ``dataset`` (in order, ``batch_size``
    samples each, the last one shorter), with every quantizer active and Dropout off::

        running_mean = (1 / B) * sum_b mean_b(x)
        running_var  = (1 / B) * sum_b var_b(x)      (var_b unbiased, over N, H, W of batch b)

    which is PyTorch's cumulative moving average (``momentum=None``); ``num_batches_tracked``
    becomes B. With ``augment`` False the dataset's random augmentation is switched off
    (:func:`deterministic_view`); either way every global RNG (Python, NumPy, torch, CUDA) is
    restored afterwards, so training that follows draws exactly what it would have drawn.
    Modes and momenta of the modules are restored too. An empty dataset leaves the statistics
    unchanged and returns ``batches: 0``.

    Returns ``{"method": "recalibrated", "samples": N, "batches": B, "batch_size",
    "augmented": augment, "seconds"}``.
    """
    started = time.perf_counter()
    data = dataset if augment else deterministic_view(dataset)
    samples = batches = 0
    with preserved_rng(device), _batchnorm_only_training(model) as layers:
        if len(data) > 0:
            loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                generator=torch.Generator())
            for layer in layers:
                layer.reset_running_stats()
            bar = tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=0.5,
                       disable=bar_disable(hide=not show_progress))
            for images, _ in bar:
                model(images.to(device))
                samples += images.shape[0]
                batches += 1
    return {"method": RECALIBRATED, "samples": samples, "batches": batches, "batch_size": batch_size,
            "augmented": bool(augment), "seconds": round(time.perf_counter() - started, 3)}


@contextmanager
def preserved_rng(device: torch.device) -> Iterator[None]:
    """Every global RNG state as it was on entry, restored on exit."""
    import random

    import numpy as np

    python_state = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG a dataset may use
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


def needs_deployment_warning(checkpoint: dict[str, Any]) -> bool:
    """Whether a checkpoint's BatchNorm statistics are training's moving averages while its run
    validated with batch statistics (``val_bn_mode: train``): the Dice its run logged was not
    measured with the statistics a deployed model uses."""
    record = checkpoint.get("batchnorm_statistics")
    method = record.get("method") if isinstance(record, dict) else None
    config = checkpoint.get("config")
    val_mode = config.get("val_bn_mode") if isinstance(config, dict) else None
    return method != RECALIBRATED and val_mode == "train"


def deployment_warning(path: Any, checkpoint: dict[str, Any]) -> str:
    """The warning for a checkpoint that :func:`needs_deployment_warning` flags, naming both Dice figures."""
    metrics = checkpoint.get("metrics") if isinstance(checkpoint.get("metrics"), dict) else {}
    logged = metrics.get("dice")
    logged_text = f" ({float(logged):.2f})" if isinstance(logged, (int, float)) else ""
    return (f"warning: {path} holds BatchNorm running statistics that were not recomputed for its weights, and "
            f"its run validated with batch statistics (val_bn_mode: train): the Dice the run logged{logged_text} "
            "is not what this model gives with its running statistics (eval mode, what predict, export and the "
            "integer engine use), which can be far lower. Retrain with bn_recalibration: true, or compare with "
            "--bn-mode train (the paper's protocol)")


__all__ = ["RECALIBRATED", "TRAINING_AVERAGES", "batchnorm_buffers", "batchnorm_layers", "deployment_warning",
           "deterministic_view", "differs", "load_batchnorm_buffers", "needs_deployment_warning",
           "recalibrate_batchnorm"]
