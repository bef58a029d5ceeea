"""Device choice, seeding, and the RNG states a checkpoint saves for exact resumption."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..errors import UserError


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


__all__ = ["rng_state", "seed_everything", "select_device", "set_rng_state"]
