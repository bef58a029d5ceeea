"""Reading run folders: ``metrics.csv``, ``summary.json``, the best epoch, one :class:`Result` per experiment."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, load_config
from ..errors import ConfigError, DataError, short_repr
from ..experiments import Experiment, collect, is_finished
from ..experiments import paper_order_key as _paper_key
from ..memory import PAPER_BASE_CHANNELS, Memory, model_memory


@dataclass
class Result:
    """One experiment's row: where its run is, what it reached, how big its model is."""

    experiment: Experiment
    cfg: Config | None
    status: str  # finished, unfinished, missing, invalid
    status_text: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    memory: Memory | None = None
    memory64: Memory | None = None
    reference: Result | None = None  # the group's full-precision row
    seconds: float | None = None
    #: Runs beside the one in the table: ``--new-run``'s ``<name>-N`` and ``--force``'s ``<name>.old-*``.
    other_runs: list[OtherRun] = field(default_factory=list)

    @property
    def run_dir(self) -> Path | None:
        """The run folder (None when the config does not load)."""
        return self.experiment.run_dir

    @property
    def dice(self) -> float | None:
        """Best val Dice so far (None without a logged epoch)."""
        return None if self.best is None else float(self.best["dice"])

    @property
    def specs(self) -> tuple[Any, Any] | None:
        """``(weight_quant, act_quant)`` :class:`quantizer.QuantSpec` of the config."""
        if self.cfg is None:
            return None
        from ..model import quant_specs

        c = self.cfg
        return quant_specs(c.quantization, c.activation_i_width, c.activation_f_width, c.weight_i_width,
                           c.weight_f_width, c.fixed_rounding, c.fixed_overflow, c.pow2_min_exponent)

    def change(self) -> tuple[float, float] | None:
        """Dice change against the full-precision row: ``(dice - dice_fp, 100 (dice - dice_fp) / dice_fp)``;
        the percentage is NaN when ``dice_fp`` is 0; None when either Dice is unknown."""
        if self.reference is None or self.reference.dice is None or self.dice is None:
            return None
        points = self.dice - self.reference.dice
        percent = 100.0 * points / self.reference.dice if self.reference.dice else float("nan")
        return points, percent


@dataclass
class OtherRun:
    """A run folder beside an experiment's own: its path, status and best epoch so far."""

    run_dir: Path
    status_text: str
    best: dict[str, Any] | None

    def describe(self) -> str:
        """``full_precision-2 (finished, best val Dice 80.12 at epoch 5)``."""
        if self.best is None:
            return f"{self.run_dir.name} ({self.status_text})"
        return (f"{self.run_dir.name} ({self.status_text}, best val Dice {float(self.best['dice']):.2f} at epoch "
                f"{int(self.best['epoch'])})")


def other_runs(run_dir: Path) -> list[OtherRun]:
    """The run folders beside ``run_dir`` that hold a run of the same experiment: ``<name>-N``
    (``--new-run``) by N, then ``<name>.old-<time>`` (the sweep's ``--force``) by name."""
    parent, name = run_dir.parent, run_dir.name
    if not parent.is_dir():
        return []
    numbered, old = [], []
    for path in parent.iterdir():
        if not path.is_dir() or not (path / "metrics.csv").is_file() and not (path / "last.pt").is_file():
            continue
        suffix = path.name[len(name):] if path.name.startswith(name) else ""
        if re.fullmatch(r"-\d+", suffix):
            numbered.append((int(suffix[1:]), path))
        elif suffix.startswith(".old-"):
            old.append((path.name, path))
    found = []
    for _, path in sorted(numbered) + sorted(old):
        history = read_metrics_csv(path / "metrics.csv") if (path / "metrics.csv").is_file() else []
        status = "finished" if is_finished(path) else f"unfinished, {len(history)} epoch(s) logged"
        found.append(OtherRun(path, status, best_row(history)))
    return found


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    """A run's ``metrics.csv``, numbers as floats (empty cells as None).

    DataError naming the file when it is not UTF-8 CSV text with ``epoch`` and ``dice``
    columns holding finite numbers on every row (a damaged or foreign file)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                        "it is damaged: move it away or restore it") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read as CSV ({exc}); move it away or restore it") from None
    history = [{k: _number(v) for k, v in row.items() if isinstance(k, str)} for row in rows]
    for line, row in enumerate(history, start=2):
        for column in ("epoch", "dice"):
            value = row.get(column)
            if not isinstance(value, float) or not math.isfinite(value):
                raise DataError(f"{path} line {line}: column '{column}' is {short_repr(value, 40)}, not a number; "
                                "the file is damaged or not a metrics.csv of this project: move it away or "
                                "restore it")
    return history


def _number(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def best_row(history: Sequence[dict[str, Any]], best_epoch: int | None = None) -> dict[str, Any] | None:
    """The epoch the best checkpoint came from: ``best_epoch`` when given and logged, else the
    first epoch with the highest Dice (the engine replaces best.pt only on a strict improvement)."""
    if not history:
        return None
    if best_epoch is not None:
        for row in history:
            if int(row["epoch"]) == best_epoch:
                return row
    best = history[0]
    for row in history[1:]:
        if float(row["dice"]) > float(best["dice"]):
            best = row
    return best


def read_result(experiment: Experiment) -> Result:
    """Read one experiment's run folder into a :class:`Result` (missing or unfinished runs included)."""
    if experiment.cfg is None:
        return Result(experiment, None, "invalid", f"invalid config: {experiment.config_error}")
    run_dir = experiment.run_dir
    assert run_dir is not None
    cfg = experiment.cfg
    saved = run_dir / "config.yaml"
    if saved.is_file():  # the formats and width the run really used
        try:
            cfg = load_config(experiment.recipe.base_config, saved, "UNET", (), experiment.recipe.extra_keys)
        except ConfigError:
            cfg = experiment.cfg
    history = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    summary: dict[str, Any] = {}
    if is_finished(run_dir):
        try:
            summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
    if summary:
        status, text = "finished", "finished"
    elif history or (run_dir / "last.pt").is_file():
        status, text = "unfinished", f"unfinished (epoch {len(history)} of {cfg.num_epochs})"
    else:
        status, text = "missing", "missing"
    best_epoch = summary.get("best_epoch")
    result = Result(experiment, cfg, status, text, history,
                    best_row(history, int(best_epoch) if best_epoch is not None else None))
    result.other_runs = other_runs(run_dir)
    result.memory = model_memory(cfg)
    result.memory64 = model_memory(cfg, PAPER_BASE_CHANNELS)
    seconds = summary.get("total_seconds")
    if seconds is None and history:
        seconds = sum(float(r.get("seconds") or 0) for r in history)
    result.seconds = seconds
    return result


def collect_results(folders: Sequence[Path], overrides: Sequence[str] = (),
                    only: Sequence[str] = ()) -> dict[str, list[Result]]:
    """Results per group (folder name), each in the paper's order, with the full-precision
    reference on the same data (:func:`data_key`) set on every row; ``only`` keeps the named
    experiment folders."""
    experiments = collect(folders, overrides, only)
    groups: dict[str, list[Result]] = {}
    for experiment in experiments:
        groups.setdefault(experiment.group, []).append(read_result(experiment))
    for group, results in groups.items():
        results.sort(key=lambda r: _paper_key(r.cfg, r.experiment.name))
        for r in results:  # Dice changes only against full precision on the same data
            r.reference = next((f for f in results if f.cfg is not None and f.cfg.quantization == "normal"
                                and f.dice is not None and data_key(f) == data_key(r)), None)
        groups[group] = results
    return groups


def data_key(result: Result) -> str:
    """The resolved ``dataset_path`` of a result's config ("" without a config): rows with
    different keys were trained on different data."""
    if result.cfg is None or result.cfg.get("dataset_path") is None:
        return ""
    return str(Path(result.cfg.dataset_path).resolve())
