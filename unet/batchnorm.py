"""BatchNorm statistics recomputed for the weights they go with.

During training every BatchNorm keeps exponential moving averages of its batch statistics
(momentum 0.1). After a few steps per epoch they lag the weights, and a model validated with
batch statistics (``val_bn_mode: train``, the EM recipe) can score far lower once it is deployed
with its running statistics. :func:`recalibrate_batchnorm` replaces the running statistics by
the mean and variance of each layer's input over the whole training set with the current
weights; :func:`batchnorm_buffers`
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

from .checkpoint import RECALIBRATED, TRAINING_AVERAGES, deployment_warning, needs_deployment_warning
from .progress import bar_disable

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
    """Inside: the model in eval mode (Dropout off) but its BatchNorm layers in training mode
    (each batch normalized by its own statistics, as in training) with ``momentum`` 1.0, so that
    after each forward their running statistics are that batch's own; afterwards every module's
    mode and every momentum as before."""
    modes = {m: m.training for m in model.modules()}
    layers = [m for _, m in batchnorm_layers(model)]
    momenta = [layer.momentum for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
        layer.momentum = 1.0
    try:
        yield layers
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, mode in modes.items():
            module.training = mode


class _Moments:
    """A BatchNorm layer's per-channel count, mean and sum of squared deviations (float64) over
    every batch it normalizes, combined from each batch's own mean and variance.

    Called after the layer's forward in training mode with ``momentum`` 1.0, when its running
    statistics are exactly the batch's mean and unbiased variance, which PyTorch's kernel has
    just computed: no second pass over the activations. Batches combine as
    ``M2 = sum_b [(n_b - 1) var_b + n_b (mean_b - mean)^2]`` (Chan et al.'s pairwise update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        n = args[0].numel() // args[0].shape[1]
        mean = module.running_mean.detach().double()
        m2 = module.running_var.detach().double() * (n - 1)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def mean_and_variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean`` and the unbiased ``var = M2 / (n - 1)`` over every value seen."""
        assert self.mean is not None and self.m2 is not None
        return self.mean, self.m2 / max(self.count - 1, 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device,
                          augment: bool = False, num_workers: int = 0, seed: int = 0,
                          desc: str = "BatchNorm statistics", show_progress: bool = True) -> dict[str, Any]:
    """Set every BatchNorm's running statistics to the mean and variance of its input over the
    whole of ``dataset`` with the model's current weights; return the record a checkpoint stores.

    The samples pass once, in batches of ``batch_size`` drawn in a random order (a generator
    seeded with ``seed``, as training shuffles, so that a batch mixes cases as it did in
    training), with every quantizer active, Dropout off and each BatchNorm normalizing its batch
    by the batch's own statistics, as in training. For each BatchNorm layer and channel, over
    the n = samples x H x W values x it sees::

        running_mean = (1 / n) * sum x
        running_var  = (1 / (n - 1)) * sum (x - running_mean)^2     (unbiased, as PyTorch keeps it)

    in float64 from each batch's mean and variance as PyTorch's BatchNorm computes them (see
    :class:`_Moments`): the population statistics of the layer's input, whatever the batches'
    composition (an average of per-batch variances would miss the spread between batches: on a
    data set ordered by case it underestimates the variance). ``num_batches_tracked`` becomes
    the number of batches. With ``augment`` False the dataset's random augmentation is switched
    off (:func:`deterministic_view`); either way every global RNG (Python, NumPy, torch, CUDA)
    is restored afterwards, so training that follows draws exactly what it would have drawn.
    The modules' modes are restored too. An empty dataset leaves the statistics unchanged and
    returns ``batches: 0``.

    Returns ``{"method": "recalibrated", "samples": N, "batches": B, "batch_size", "order",
    "augmented": augment, "seconds"}``.
    """
    started = time.perf_counter()
    data = dataset if augment else deterministic_view(dataset)
    samples = batches = 0
    with preserved_rng(device), _batchnorm_only_training(model) as layers:
        if len(data) > 0:
            loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                generator=torch.Generator().manual_seed(seed))
            moments = [_Moments() for _ in layers]
            hooks = [layer.register_forward_hook(m) for layer, m in zip(layers, moments, strict=True)]
            bar = tqdm(loader, desc=desc, leave=False, unit="batch", mininterval=0.5,
                       disable=bar_disable(hide=not show_progress))
            try:
                for images, _ in bar:
                    model(images.to(device))
                    samples += images.shape[0]
                    batches += 1
            finally:
                for hook in hooks:
                    hook.remove()
            for layer, m in zip(layers, moments, strict=True):
                if m.mean is None:
                    continue  # a layer the forward never reached
                mean, variance = m.mean_and_variance()
                layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
                layer.running_var.copy_(variance.to(layer.running_var.dtype))
                if layer.num_batches_tracked is not None:
                    layer.num_batches_tracked.fill_(batches)
    return {"method": RECALIBRATED, "samples": samples, "batches": batches, "batch_size": batch_size,
            "order": f"shuffled (seed {seed})", "augmented": bool(augment),
            "seconds": round(time.perf_counter() - started, 3)}


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


__all__ = ["RECALIBRATED", "TRAINING_AVERAGES", "batchnorm_buffers", "batchnorm_layers", "deployment_warning",
           "deterministic_view", "differs", "load_batchnorm_buffers", "needs_deployment_warning",
           "recalibrate_batchnorm"]
