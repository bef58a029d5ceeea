"""The config keys that define a trained model, taken from its checkpoint when it is evaluated.

A checkpoint stores the config it was trained with. Evaluating it (inference, visualize, the
results' overlays) must build the same network: :func:`checkpoint_model_config` takes every
:data:`MODEL_KEYS` value from the checkpoint, and refuses a command that sets one of them (in the
experiment YAML or with ``-o``) to a different value instead of silently evaluating another model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import COMMON_KEYS, Config, coerce_value
from .errors import ConfigError, DataError
from .model import MODEL_KEYS


def checkpoint_model_config(cfg: Config, state: dict[str, Any], path: Path, defaults_source: str) -> Config:
    """``cfg`` with each :data:`MODEL_KEYS` value the checkpoint ``state`` stores in its ``config``.

    A key whose source (``cfg.sources``) is ``defaults_source`` (the dataset's base config: the
    command did not set it) silently takes the checkpoint's value; a key the command set to a
    different value raises :class:`ConfigError` naming the key, both values and who set it. Keys
    the checkpoint does not store (older checkpoints) or the schema does not have stay as they are.
    A stored value that is not valid raises :class:`DataError`.
    """
    stored = state.get("config")
    if not isinstance(stored, dict):
        return cfg
    schema = {k.name: k for k in COMMON_KEYS}
    values = dict(cfg)
    sources = dict(cfg.sources)
    conflicts = []
    for key in MODEL_KEYS:
        if key not in stored or key not in cfg:
            continue
        try:
            saved = coerce_value(schema[key], stored[key], Path.cwd()) if key in schema else stored[key]
        except ValueError as exc:
            raise DataError(f"checkpoint {path}: its stored config key '{key}' {exc}") from None
        if saved == cfg[key]:
            continue
        if cfg.sources.get(key, defaults_source) == defaults_source:
            values[key] = saved
            sources[key] = f"checkpoint {path}"
        else:
            conflicts.append(f"'{key}' is {cfg[key]!r} (set by {cfg.sources[key]}) but the checkpoint was "
                             f"trained with {saved!r}")
    if conflicts:
        raise ConfigError(f"checkpoint {path} defines the model to evaluate: {'; '.join(conflicts)}; drop those "
                          "settings (the checkpoint's values are used) or set trained_model to a checkpoint "
                          "trained with them")
    return Config(values, sources)
