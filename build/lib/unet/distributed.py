"""One run on several processes: torchrun's environment, the process group and its few collectives.

``torchrun --nproc_per_node=N em_unet.py -f config.yaml`` starts N copies of the trainer with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. :func:`init` reads them and joins the process
group (NCCL on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU). Without ``WORLD_SIZE``
(or with ``WORLD_SIZE=1``) there is no process group: :data:`SINGLE` describes the one process and
every collective here returns its input, so a plain run takes the same code path as always.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, UserError


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes the run folder and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group joins several processes (``size > 1``)."""
        return self.size > 1


SINGLE = World()


def env_world() -> World:
    """The world torchrun describes in ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (:data:`SINGLE`
    when ``WORLD_SIZE`` is unset); joins nothing."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return SINGLE
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def check_config(cfg: Any, world: World, cuda: bool | None = None) -> None:
    """Refuse settings that cannot run in ``world``: a ``batch_size`` that does not split evenly
    over the ranks, ``sync_batchnorm`` without CUDA, ``precision: 16-mixed`` without CUDA.
    ``cuda`` defaults to ``torch.cuda.is_available()``. Raises :class:`ConfigError`."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split evenly over {world.size} processes "
                          f"(WORLD_SIZE); batch_size is the global batch: make it a multiple of {world.size}")
    if cfg.sync_batchnorm and not cuda:
        raise ConfigError("sync_batchnorm: true needs CUDA (SyncBatchNorm runs on GPUs only); set it to false "
                          "on the CPU")
    if cfg.precision == "16-mixed" and not cuda:
        raise ConfigError("precision 16-mixed needs CUDA (its GradScaler and float16 kernels are GPU ones); "
                          "use precision bf16 or 32 on the CPU")


def init(world: World) -> World:
    """Join the process group of ``world`` (NCCL when CUDA is available, gloo otherwise; the
    rendezvous comes from torchrun's ``MASTER_ADDR``/``MASTER_PORT``) and, on CUDA, make
    ``cuda:local_rank`` the current device. A single world joins nothing."""
    if not world.distributed or dist.is_initialized():
        return world
    if torch.cuda.is_available():
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {world.local_rank} has no GPU: this node has {torch.cuda.device_count()}; "
                            "start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", world.local_rank))
    else:
        dist.init_process_group("gloo")
    return world


def teardown(world: World) -> None:
    """Leave the process group joined by :func:`init` (nothing for a single world)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def device(world: World) -> tuple[torch.device, str]:
    """The device of a rank (``cuda:local_rank``, else the CPU) and a sentence naming it and the world."""
    if torch.cuda.is_available():
        where = torch.device("cuda", world.local_rank)
        name = f"cuda:{world.local_rank} ({torch.cuda.get_device_name(world.local_rank)})"
    else:
        where, name = torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads)"
    backend = dist.get_backend() if dist.is_initialized() else "none"
    return where, f"device: {name}; rank {world.rank} of {world.size} (backend {backend})"


def barrier(world: World) -> None:
    """Wait until every rank gets here."""
    if world.distributed:
        dist.barrier()


def all_gather(world: World, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` for a single world). Pickles: keep it to
    plain rows of numbers, strings and small arrays."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(world: World, flags: tuple[bool, ...], device: torch.device) -> tuple[bool, ...]:
    """For each flag, whether it is true on at least one rank (one all-reduce of a few numbers)."""
    if not world.distributed:
        return tuple(flags)
    value = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in value.tolist())


def broadcast_buffers(world: World, model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, the ternary beta) to every rank.

    DDP does this at the start of each training forward; after the last step every rank holds
    statistics of its own batch, so validation (and anything else that reads them) first calls
    this to see what rank 0 saves in its checkpoints.
    """
    if not world.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, world: World, device: torch.device, sync_batchnorm: bool) -> nn.Module:
    """The module a training step calls: ``model`` itself in a single world, else
    ``DistributedDataParallel(model)`` (gradients averaged over the ranks at every backward,
    rank 0's parameters and buffers broadcast at construction), its BatchNorm layers first
    converted to ``SyncBatchNorm`` when ``sync_batchnorm``. ``model`` keeps its own parameters
    (the wrapper shares them), so checkpoints save ``model.state_dict()`` unchanged."""
    if not world.distributed:
        return model
    if sync_batchnorm:
        _convert_to_sync_batchnorm(model)
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _convert_to_sync_batchnorm(model: nn.Module) -> None:
    """Replace every BatchNorm2d of ``model`` in place by a SyncBatchNorm with the same state."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _convert_to_sync_batchnorm(child)


_LOCAL_GROUPS: dict[int, Any] = {}


@contextlib.contextmanager
def local_batchnorm(world: World, model: nn.Module) -> Iterator[None]:
    """Inside, SyncBatchNorm layers normalize with this rank's batch only (a process group of
    one), as plain BatchNorm does: validation gives each rank different batches, and a batch's
    statistics must be its own (``val_bn_mode: train``). Nothing changes without SyncBatchNorm."""
    layers = [m for m in model.modules() if isinstance(m, nn.SyncBatchNorm)]
    if not world.distributed or not layers:
        yield
        return
    if not _LOCAL_GROUPS:
        for rank in range(world.size):  # every rank must create every group, in the same order
            _LOCAL_GROUPS[rank] = dist.new_group([rank])
    saved = [m.process_group for m in layers]
    for m in layers:
        m.process_group = _LOCAL_GROUPS[world.rank]
    try:
        yield
    finally:
        for m, group in zip(layers, saved, strict=True):
            m.process_group = group


class StopRequest:
    """SIGINT/SIGTERM handlers for the ranks of a distributed run: the first signal only sets
    :attr:`requested`, which the training loop shares with the other ranks (:func:`any_rank`)
    at the next batch, so every rank stops at the same step; a second one raises
    ``KeyboardInterrupt`` at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def install(self) -> dict[int, Any]:
        """Install the handler for SIGINT and SIGTERM; return the previous handlers."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self)
        return previous


__all__ = ["SINGLE", "StopRequest", "World", "all_gather", "any_rank", "barrier", "broadcast",
           "broadcast_buffers", "check_config", "device", "env_world", "init", "local_batchnorm", "teardown",
           "wrap"]
