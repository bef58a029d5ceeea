"""What a run tells: the log (console and ``train.log``), the model line, metrics as text and the
CSV files (``metrics.csv``, ``slices.csv``, ``inference.csv``)."""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..fileio import atomic_write_text
from ..memory import describe_memory
from ..model import UNet

# tqdm creates its write lock lazily, inside a try whose finally releases it: a Ctrl-C that lands
# while the first log line creates it surfaces as tqdm's AttributeError, not as an interrupt.
# Created here, at import, a Ctrl-C is an ordinary start-up interrupt (unet.interrupts).
tqdm.get_lock()


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


def silent(message: str) -> None:
    """The log of a rank other than 0: rank 0 says everything once."""


def describe_model(model: UNet) -> str:
    """One line: quantization formats, parameter count and weight memory (the packed export's
    tensors, :func:`unet.memory.packed_size_bytes`, against the same tensors in float32)."""
    params = sum(p.numel() for p in model.parameters())
    return (f"model: U-Net, weights {model.weight_quant}, activations {model.act_quant}, {params:,} parameters, "
            f"{describe_memory(model)}")


def format_metrics(summary: dict[str, float], names: tuple[str, ...]) -> str:
    """``dice <mean> ± <std>, <metric> <value>, ..., val_loss <loss> over <n> slices`` for ``summary``
    (a :func:`unet.train.evaluation.evaluate` summary) and the metric ``names`` (the first is the Dice)."""
    parts = [f"dice {summary['dice']:.2f} ± {summary['dice_std']:.2f}"]
    parts += [f"{name} {summary[name]:.4g}" for name in names[1:]]
    parts.append(f"val_loss {summary['val_loss']:.4f} over {int(summary['n_slices'])} slices")
    return ", ".join(parts)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` (the first row's keys are the header) to the CSV at ``path``, atomically;
    nothing when there are no rows."""
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def append_csv(path: Path, row: dict[str, Any]) -> None:
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


__all__ = ["RunLog", "append_csv", "describe_model", "format_metrics", "silent", "write_csv"]
