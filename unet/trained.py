"""One loader of a trained model: checkpoint -> weights, config, dataset, input transform.

:meth:`TrainedModel.load` reads a run folder's ``best.pt`` or a checkpoint file through
:func:`unet.checkpoint.load_checkpoint` (``weights_only=True`` and the validation every
loader shares), decides the config that rebuilds its network, builds it with
:func:`unet.model.build_stored_model`, loads the weights strictly
(:func:`unet.checkpoint.load_model_state`) and returns it in eval mode on the CPU, beside the
checkpoint's dataset, input-transform record and BatchNorm statistics record. Predict, export,
the results' overlays and weight grids, and the trainer's inference and visualize modes all
load through it; each keeps its own rule for the config (:data:`ConfigRule`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantizer.modules import DEFAULT_POW2_MIN_EXPONENT

from .checkpoint import deployment_warning, load_checkpoint, load_model_state, needs_deployment_warning
from .config import Config
from .errors import DataError
from .input_transform import canonical_dataset_name
from .model import MODEL_KEYS, UNet, build_stored_model
from .modelkeys import checkpoint_model_config

#: ``(checkpoint state, checkpoint path) -> config`` that rebuilds the checkpoint's network.
ConfigRule = Callable[[dict[str, Any], Path], Config]


def checkpoint_file(source: str | os.PathLike[str]) -> Path:
    """A run folder -> its ``best.pt`` (DataError when it has none); anything else -> itself
    (:func:`unet.checkpoint.load_checkpoint` names a missing file)."""
    path = Path(source)
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise DataError(f"run folder {path} has no best.pt; give a run folder that finished an epoch "
                            "or a checkpoint file")
        return best
    return path


def stored_config(state: dict[str, Any], path: Path) -> tuple[Config, list[str]]:
    """The config stored in the checkpoint, alone, and notes for the user.

    DataError when the checkpoint stores no config or lacks a :data:`unet.model.MODEL_KEYS` key;
    a checkpoint from before ``pow2_min_exponent`` gets the default bound (a note says so when
    it is a pow2 model). ``quantization`` is lower-cased.
    """
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise DataError(f"checkpoint {path} has no saved config; it was not written by this project's trainers")
    values = dict(saved)
    notes = []
    if "pow2_min_exponent" not in values:
        values["pow2_min_exponent"] = DEFAULT_POW2_MIN_EXPONENT
        if str(values.get("fixed_rounding")) == "pow2" and str(values.get("quantization", "")).lower() == "fixed":
            notes.append(f"note: {path} predates pow2_min_exponent; exported with the default "
                         f"{DEFAULT_POW2_MIN_EXPONENT} (magnitudes below 2^{DEFAULT_POW2_MIN_EXPONENT} become 0)")
    missing = [key for key in MODEL_KEYS if key not in values]
    if missing:
        raise DataError(f"checkpoint {path}: its config lacks {', '.join(missing)}; it is not from this project")
    values["quantization"] = str(values["quantization"]).lower()
    return Config(values, {}), notes


def checkpoint_dataset(state: dict[str, Any]) -> str | None:
    """The canonical dataset name (``EM``, ``GM``, ``NIH``) the checkpoint was trained on, from
    its ``dataset`` entry or its config's; None when it names none this project knows."""
    config = state.get("config")
    name = state.get("dataset") or (config.get("dataset", "") if isinstance(config, dict) else "")
    try:
        return canonical_dataset_name(name)
    except DataError:
        return None


@dataclass
class TrainedModel:
    """A trained U-Net and what its checkpoint records about it (:meth:`load`)."""

    #: The checkpoint file read.
    path: Path
    #: The network, weights loaded, on the CPU, in eval mode.
    model: UNet
    #: The config that built ``model`` (see :meth:`load` for which).
    config: Config
    #: ``EM``, ``GM`` or ``NIH``; None when the checkpoint names no known dataset.
    dataset: str | None
    #: The checkpoint's input-transform record (:mod:`unet.input_transform`); None in
    #: checkpoints written before the record existed.
    input_transform: dict[str, Any] | None
    #: The checkpoint's BatchNorm statistics record (``method``: recalibrated or the training
    #: averages); None in older checkpoints.
    batchnorm_statistics: dict[str, Any] | None
    #: The whole checkpoint as read (epoch, metrics, config, ...).
    state: dict[str, Any] = field(repr=False)
    #: Notes for the user about how the checkpoint was read (printed by the commands).
    notes: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, source: str | os.PathLike[str], config: Config | ConfigRule | None = None, *,
             defaults_source: str = "", allow_unsafe: bool = False) -> TrainedModel:
        """Load the trained model of ``source``: a run folder (its ``best.pt``) or a checkpoint file.

        ``config`` decides the config that rebuilds the network:

        * None: the checkpoint's stored config alone (:func:`stored_config`; DataError when it
          has none or lacks a model key);
        * a :class:`~unet.config.Config`: that config with every model key taken from the
          checkpoint (:func:`unet.modelkeys.checkpoint_model_config`: a key whose source is
          ``defaults_source`` silently takes the checkpoint's value, one the command set to
          another value is a ConfigError);
        * a :data:`ConfigRule` callable: its result (it may check the state and raise first).

        ``allow_unsafe`` as for :func:`unet.checkpoint.load_checkpoint`. DataError (one line
        naming the checkpoint) for a missing, unsafe, damaged or foreign checkpoint, a stored
        config that cannot build a model, or weights that do not fit it.
        """
        path = checkpoint_file(source)
        state = load_checkpoint(path, allow_unsafe)
        notes: list[str] = []
        if config is None:
            cfg, notes = stored_config(state, path)
        elif isinstance(config, Config):
            cfg = checkpoint_model_config(config, state, path, defaults_source)
        else:
            cfg = config(state, path)
        model = build_stored_model(cfg, path)  # load_checkpoint has checked that "model" is a dict of tensors
        load_model_state(model, state["model"], path)
        record = state.get("input_transform")
        batchnorm = state.get("batchnorm_statistics")
        return cls(path, model.eval(), cfg, checkpoint_dataset(state), record if isinstance(record, dict) else None,
                   batchnorm if isinstance(batchnorm, dict) else None, state, notes)

    @property
    def deployment_warning(self) -> str | None:
        """The warning for a checkpoint whose BatchNorm running statistics were not recomputed
        while its run validated with batch statistics (:func:`unet.checkpoint.deployment_warning`),
        else None."""
        return deployment_warning(self.path, self.state) if needs_deployment_warning(self.state) else None

    @property
    def messages(self) -> list[str]:
        """What a command deploying this model prints first: the loading notes, then the
        deployment warning when there is one."""
        warning = self.deployment_warning
        return [*self.notes, *([warning] if warning is not None else [])]


__all__ = ["ConfigRule", "TrainedModel", "checkpoint_dataset", "checkpoint_file", "stored_config"]
