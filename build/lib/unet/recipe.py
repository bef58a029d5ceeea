"""What makes a trainer dataset-specific: the :class:`Recipe` the engine runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from .config import Config, Key


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
