"""Experiment configuration: the schema, loading, merging and validation (SPEC §2).

A run's config is the dataset's base YAML (``*_BASE/config.yaml``), then the experiment's
YAML (``-f``, under the top key ``-t``), then ``-o key=value`` overrides, each layer
replacing keys of the one before. Every key is validated before any work starts; an error
names the key and the file (or ``-o``) that set it. Relative paths resolve against the
folder of the file that set them (``-o`` paths against the working directory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quantizer.functional import OVERFLOWS, ROUNDINGS
from quantizer.modules import POW2_MIN_EXPONENT_RANGE
from quantizer.options import StringOption

from .errors import ConfigError, short_repr

QUANTIZATIONS = ("normal", "fixed", "int", "bnn", "ternary")


class Mode(StringOption):
    """The trainer's ``operation_mode`` (a ``str``: equal to its value, so YAML and checkpoints keep plain strings)."""

    NORMAL = "normal"
    RETRAIN = "retrain"
    INFERENCE = "inference"
    VISUALIZE = "visualize"
    RESUME = "resume"


MODES = Mode.values()
PRECISIONS = ("32", "bf16", "16-mixed")

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Key:
    """One config key: its expected type, a range/choice check and its documentation."""

    name: str
    kind: str  # int, float, str, bool, path, int_list, size, choice
    help: str
    choices: tuple[str, ...] = ()
    check: Check | None = None
    nullable: bool = False


def _at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def _open_interval(low: float, high: float) -> Check:
    return lambda v: None if low < v < high else f"must be between {low} and {high} (exclusive)"


def _half_open(low: float, high: float) -> Check:
    return lambda v: None if low <= v < high else f"must satisfy {low} <= value < {high}"


def _between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


COMMON_KEYS: tuple[Key, ...] = (
    Key("quantization", "choice", "Normal, FIXED, INT, BNN or Ternary (case-insensitive)",
        choices=QUANTIZATIONS),
    Key("activation_i_width", "int", "activation integer bits (FIXED, INT)", check=_at_least(0)),
    Key("activation_f_width", "int", "activation fractional bits (FIXED)", check=_at_least(0)),
    Key("weight_i_width", "int", "weight integer bits (FIXED, INT)", check=_at_least(0)),
    Key("weight_f_width", "int", "weight fractional bits (FIXED)", check=_at_least(0)),
    Key("activation", "choice", "nonlinearity before BatchNorm: relu, tanh or ternarytanh",
        choices=("relu", "tanh", "ternarytanh")),
    Key("lr", "float", "Adam initial learning rate", check=lambda v: None if v > 0 else "must be > 0"),
    Key("num_epochs", "int", "epochs; also the length of the LR and beta schedules", check=_at_least(1)),
    Key("operation_mode", "choice", "normal, retrain, inference, visualize or resume", choices=MODES),
    Key("trained_model", "path", "checkpoint to load (retrain, inference, visualize); in normal "
        "mode the best model is also copied here. Unset: the run folder's best.pt", nullable=True),
    Key("allow_unsafe_checkpoint", "bool", "read a checkpoint that holds pickled Python objects (written before "
        "weights-only loading) with torch.load(weights_only=False), after a warning: it can run code, so only "
        "for files you trust"),
    Key("experiment_name", "str", "run folder name (unset: the experiment folder's name)", nullable=True),
    Key("log_output_dir", "path", "parent of the run folder (unset: runs/ beside the experiment config)",
        nullable=True),
    Key("gpu_core_num", "int", "CUDA device index (unset: cuda:0 when available); CPU without CUDA",
        check=_at_least(0), nullable=True),
    Key("dataset", "str", "dataset name shown in logs and results"),
    Key("model_type", "choice", "network (only unet)", choices=("unet",)),
    Key("init_type", "choice", "weight init of quantized convs: U(-1, 1), zero bias", choices=("glorot",)),
    Key("dataset_path", "path", "prepared data (EM, NIH) or the release folder (GM)"),
    Key("batch_size", "int", "training batch size", check=_at_least(1)),
    Key("val_batch_size", "int", "validation batch size", check=_at_least(1)),
    Key("crop_size", "size", "[H, W] centre crop (padded when smaller), multiples of 8"),
    Key("augment", "bool", "online augmentation (GM: elastic + affine)"),
    Key("normalize", "choice", "instance: per-image (x - mean) / std; none: raw [0, 1]", choices=("instance", "none")),
    Key("loss", "choice", "bce_dice_original (EM original, double sigmoid), bce_dice, dice",
        choices=("bce_dice_original", "bce_dice", "dice")),
    Key("lr_scheduler", "choice", "multistep (x0.1 at range(0, N, N // 5)), cosine (to 0 over N), "
        "constant", choices=("multistep", "cosine", "constant")),
    Key("val_bn_mode", "choice", "BatchNorm mode during validation: train (running stats updated) or eval",
        choices=("train", "eval")),
    Key("bn_recalibration", "choice", "true: recompute every BatchNorm's running statistics over the training set "
        "(no augmentation) for the weights of each checkpoint before it is written (one forward pass over the "
        "training set per epoch), and log the eval-mode Dice with them; best: only for a new best.pt and the "
        "last epoch's last.pt; false: training's moving averages, as the original",
        choices=("true", "best", "false")),
    Key("threshold", "float", "binarization threshold of predictions for the metrics",
        check=_open_interval(0, 1)),
    Key("empty_dice", "int", "Dice (x100) of a slice where prediction and truth are both empty",
        check=lambda v: None if v in (0, 1) else "must be 0 or 1"),
    Key("fixed_rounding", "choice", "FIXED variant: nearest (grid) or pow2 (powers of two)",
        choices=ROUNDINGS),
    Key("fixed_overflow", "choice", "FIXED nearest overflow: wrap (original) or saturate",
        choices=OVERFLOWS),
    Key("pow2_min_exponent", "int", "FIXED pow2: smallest exponent e of 2^e; magnitudes rounding below "
        "it become 0 (bounds the stored exponent range)", check=_between(*POW2_MIN_EXPONENT_RANGE)),
    Key("dropout", "float", "Dropout2d probability after each BatchNorm (0 = off)", check=_half_open(0, 1)),
    Key("base_channels", "int", "U-Net width (64 = the paper)", check=_at_least(1)),
    Key("seed", "int", "seed of every RNG"),
    Key("num_workers", "int", "data loader worker processes", check=_at_least(0)),
    Key("overlay_every", "int", "write a validation overlay every this many epochs (and the last)",
        check=_at_least(1)),
    Key("precision", "choice", "32 (float32), bf16 or 16-mixed (float16 + GradScaler, CUDA only): the float "
        "layers run under torch.autocast, every quantizer in float32", choices=PRECISIONS),
    Key("sync_batchnorm", "bool", "under torchrun: BatchNorm statistics over all ranks' batches (SyncBatchNorm; "
        "CUDA only)"),
)

#: Keys only the GM trainer has (SCGM subjects, sites and the in-plane resolution).
GM_KEYS: tuple[Key, ...] = (
    Key("train_subjects", "int_list", "GM: subject numbers (sc01 = 1) used for training, all sites"),
    Key("val_subjects", "int_list", "GM: subject numbers used for validation"),
    Key("sites", "int_list", "GM: sites to use (unset: all)", nullable=True),
    Key("resolution_mm", "float", "GM: in-plane resampling resolution in mm",
        check=lambda v: None if v > 0 else "must be > 0"),
)


class Config(dict):
    """The merged config: a dict with attribute access (``cfg.lr``) and the file of each key."""

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
        super().__init__(values)
        self.sources = dict(sources)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to_plain(self) -> dict[str, Any]:
        """The values with paths as strings (YAML- and checkpoint-friendly)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.items()}

    def to_yaml(self, top_key: str = "UNET") -> str:
        """The config as YAML under ``top_key`` (paths as strings), as saved in a run folder."""
        return yaml.safe_dump({top_key: self.to_plain()}, sort_keys=False)


def read_yaml_section(path: Path, top_key: str) -> dict[str, Any]:
    """Read ``path`` and return the mapping under ``top_key``; ConfigError names what is wrong."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(document, dict) or top_key not in document:
        found = ", ".join(str(k)[:60] for k in list(document)[:10]) if isinstance(document, dict) else "no mapping"
        raise ConfigError(
            f"{path}: no top key '{top_key}' (found: {found}); pass the right one with -t"
        )
    section = document[top_key]
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: '{top_key}' must hold a mapping of keys, got {type(section).__name__}")
    return section


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``-o key=value``; the value is read as YAML (``-o crop_size=[64,64]``)."""
    if "=" not in text:
        raise ConfigError(f"-o {text}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _suggest(name: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def coerce_value(key: Key, value: Any, base_dir: Path) -> Any:
    """Check ``value`` against ``key``; return it normalised or raise ValueError(reason).

    The one coercion of a config value: :func:`load_config` applies it to the YAML and ``-o``
    values, the checkpoint loaders to the config a checkpoint stores (relative paths resolve
    against ``base_dir``)."""
    if value is None:
        if key.nullable:
            return None
        raise ValueError("must be set")
    kind = key.kind
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, got {short_repr(value)}")
    elif kind == "float":
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"must be a number, got {short_repr(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a number, got {short_repr(value)}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {short_repr(value)}")
    elif kind == "str":
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise ValueError(f"must be a string, got {short_repr(value)}")
        value = str(value)
    elif kind == "choice":
        if isinstance(value, bool) and "true" in key.choices:  # bn_recalibration: true
            value = "true" if value else "false"
        if isinstance(value, int) and not isinstance(value, bool):  # precision: 32
            value = str(value)
        if not isinstance(value, str) or value.lower() not in key.choices:
            raise ValueError(f"must be one of {', '.join(key.choices)}; got {short_repr(value)}")
        value = value.lower()
    elif kind == "path":
        if not isinstance(value, str):
            raise ValueError(f"must be a path string, got {short_repr(value)}")
        path = Path(value).expanduser()
        value = path if path.is_absolute() else (base_dir / path).resolve()
    elif kind == "int_list":
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"must be a list of integers, got {short_repr(value)}")
    elif kind == "size":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise ValueError(f"must be [H, W] (two integers), got {short_repr(value)}")
        if any(v < 8 or v % 8 for v in value):
            raise ValueError(f"H and W must be positive multiples of 8 (three poolings), got {short_repr(value)}")
    else:  # pragma: no cover - schema bug
        raise AssertionError(kind)
    if key.check is not None:
        reason = key.check(value)
        if reason:
            raise ValueError(f"{reason}, got {short_repr(value)}")
    return value


def load_config(
    base_file: Path,
    experiment_file: Path,
    top_key: str = "UNET",
    overrides: Iterable[str] = (),
    extra_keys: Iterable[Key] = (),
) -> Config:
    """Load, merge and validate a run's config.

    ``base_file`` holds every key's dataset default; ``experiment_file`` (under
    ``top_key``) and then ``overrides`` replace keys. Unknown keys, wrong types, out of
    range values and missing keys raise :class:`ConfigError` naming key and file.
    Unset ``experiment_name`` becomes the experiment folder's name and unset
    ``log_output_dir`` becomes ``runs/`` beside the experiment config.
    """
    schema = {k.name: k for k in (*COMMON_KEYS, *extra_keys)}
    experiment_file = Path(experiment_file).resolve()
    layers: list[tuple[str, Path, dict[str, Any]]] = [
        (str(base_file), Path(base_file).resolve().parent, read_yaml_section(Path(base_file), "UNET")),
        (str(experiment_file), experiment_file.parent, read_yaml_section(experiment_file, top_key)),
    ]
    override_values: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        override_values[key] = value
    layers.append(("-o", Path.cwd(), override_values))

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, base_dir, section in layers:
        for name, raw in section.items():
            if name not in schema:
                raise ConfigError(
                    f"{source}: unknown key {short_repr(name)}{_suggest(str(name)[:200], schema)}; "
                    "see the config table in docs/config.md"
                )
            try:
                values[name] = coerce_value(schema[name], raw, base_dir)
            except ValueError as exc:
                raise ConfigError(f"{source}: key '{name}' {exc}") from None
            sources[name] = source

    missing = [name for name in schema if name not in values]
    if missing:
        raise ConfigError(f"{base_file}: missing key(s) {', '.join(missing)}")
    if values["experiment_name"] is None:
        values["experiment_name"] = experiment_file.parent.name
    if values["log_output_dir"] is None:
        values["log_output_dir"] = experiment_file.parent / "runs"
    _check_consistency(values, sources)
    return Config(values, sources)


def _check_consistency(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Checks that involve more than one key."""
    if values["quantization"] == "int":
        for name in ("activation_i_width", "weight_i_width"):
            if values[name] < 1:
                raise ConfigError(f"{sources[name]}: key '{name}' must be >= 1 for INT quantization")
    name = values["experiment_name"]
    if not name or "/" in name or "\x00" in name or name in (".", "..") or len(name.encode()) > 255:
        raise ConfigError(f"{sources.get('experiment_name', '-')}: key 'experiment_name' must be a "
                          f"plain folder name (no '/' or NUL, at most 255 bytes), got {short_repr(name, 80)}")


def markdown_key_table(bases: Mapping[str, Path], extra_keys: Iterable[Key] = ()) -> str:
    """The config table of docs/config.md: every key, its default in each base config and its meaning.

    ``bases`` maps a dataset name (a column) to its base config file. A key a base does not
    have shows as ``-``.
    """
    sections = {name: read_yaml_section(Path(path), "UNET") for name, path in bases.items()}
    header = "| key | " + " | ".join(sections) + " | meaning |"
    lines = [header, "|" + "---|" * (len(sections) + 2)]
    for key in (*COMMON_KEYS, *extra_keys):
        cells = []
        for section in sections.values():
            if key.name not in section:
                cells.append("-")
            else:
                cells.append(f"`{_yaml_scalar(section[key.name])}`")
        lines.append(f"| `{key.name}` | " + " | ".join(cells) + f" | {key.help} |")
    return "\n".join(lines)


def _yaml_scalar(value: Any) -> str:
    """``value`` as one line of YAML flow style (``null``, ``0.001``, ``[200, 200]``)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _main() -> None:
    """``python -m unet.config --readme-table`` prints the config table of docs/config.md."""
    import argparse


    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--readme-table", action="store_true", required=True,
                        help="print the Markdown table of every key kept in docs/config.md")
    parser.parse_args()
    from .configs import DATASETS, packaged_config  # equal to <DATASET>_BASE/config.yaml

    bases = {name: packaged_config(name) for name in DATASETS}
    print(markdown_key_table(bases, GM_KEYS))


if __name__ == "__main__":
    _main()
