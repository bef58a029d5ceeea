"""The DataLoaders of a run: the settings every loader shares and the training loader (one
process, or this rank's share under torchrun)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .. import distributed
from ..config import Config


def loader_options(cfg: Config) -> dict[str, Any]:
    """The DataLoader settings every loader shares: the config's workers, pinned memory on CUDA."""
    return {"num_workers": cfg.num_workers, "persistent_workers": cfg.num_workers > 0,
            "pin_memory": torch.cuda.is_available()}


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, cfg: Config,
                generator: torch.Generator | None) -> DataLoader:
    """A DataLoader with the config's workers; shuffling draws from ``generator``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **loader_options(cfg))


def training_loader(dataset: Dataset, cfg: Config, world: distributed.World, generator: torch.Generator) -> DataLoader:
    """The training loader: shuffled by the run's ``generator``, or under torchrun this rank's share
    of a DistributedSampler (seeded with ``seed``, reshuffled by ``set_epoch`` every epoch) in
    batches of ``batch_size / world size``."""
    if not world.distributed:
        return make_loader(dataset, cfg.batch_size, True, cfg, generator)
    sampler = DistributedSampler(dataset, world.size, world.rank, shuffle=True, seed=cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch_size // world.size, sampler=sampler, **loader_options(cfg))


__all__ = ["loader_options", "make_loader", "training_loader"]
