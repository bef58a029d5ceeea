"""``python -m unet.new_experiment SOURCE DEST [--dataset-path PATH] [-o key=value]...``.

Makes a new experiment folder from an existing one, so nobody hand-makes symbolic links:
``DEST/config.yaml`` is SOURCE's config with ``dataset_path`` (and any ``-o`` key) set, every
path written relative to DEST (the trainer resolves relative paths against the config's folder),
and ``DEST/<dataset>_unet.py`` is a relative link to the same base trainer as SOURCE's. The
config is checked as the trainer checks it before anything is written; a prepared data set
whose images are larger than ``crop_size`` gets a note (a centre crop hides the image borders
from training).

Exit status: 0 done; 2 a user error (one ``error:`` line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from .config import load_config, parse_override
from .errors import ConfigError, UserError
from .exitcodes import ExitCode
from .experiments import absolute_overrides, is_experiment_folder, load_recipe

#: Config keys holding paths (resolved against the folder of the config that sets them).
PATH_KEYS = ("dataset_path", "trained_model", "log_output_dir")


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m unet.new_experiment",
        description="Make a new experiment folder DEST from the experiment folder SOURCE: its config.yaml copied "
        "with dataset_path (and any -o key) set relative to DEST, and a link to the same trainer.",
    )
    parser.add_argument("source", type=Path, metavar="SOURCE", help="an experiment folder, e.g. em/quickstart")
    parser.add_argument("dest", type=Path, metavar="DEST", help="the new experiment folder (must not exist)")
    parser.add_argument("--dataset-path", type=Path, default=None, metavar="PATH",
                        help="the prepared data (EM, NIH) or release folder (GM) the new experiment trains on "
                        "(default: SOURCE's)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="also set this config key (repeatable), e.g. -o crop_size=[256,256] -o num_epochs=30")
    return parser


def _trainer(source: Path) -> Path:
    return sorted(p for p in source.glob("*_unet.py") if p.is_file())[0]


def _relative(path: Path, start: Path) -> str:
    return os.path.relpath(path.resolve(), start.resolve())


def make_experiment(source: Path, dest: Path, dataset_path: Path | None = None,
                    overrides: list[str] | None = None) -> dict[str, Any]:
    """Create ``dest`` from the experiment folder ``source`` (see the module docstring).

    Returns ``{"config": path, "trainer": link, "target": link target, "values": the keys set,
    "notes": [...]}``. Raises :class:`UserError` when ``source`` is not an experiment folder,
    ``dest`` exists, or the new config does not pass the trainer's checks; nothing is left
    behind then.
    """
    source, dest = Path(source), Path(dest)
    if not is_experiment_folder(source):
        raise UserError(f"{source} is not an experiment folder (it needs a config.yaml and a *_unet.py trainer "
                        "link); give one, e.g. em/quickstart")
    if os.path.lexists(dest):
        raise UserError(f"{dest} already exists; choose a new folder name")
    if not dest.resolve().parent.is_dir():
        raise UserError(f"the folder {dest.resolve().parent} that would hold {dest.name} does not exist")
    trainer = _trainer(source)
    target = trainer.resolve()
    recipe = load_recipe(trainer)
    text = (source / "config.yaml").read_text(encoding="utf-8")
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source / 'config.yaml'} is not valid YAML ({exc})") from None
    section = dict(document.get("UNET") or {})
    dest_abs = dest.resolve().parent / dest.name
    for key in PATH_KEYS:  # relative paths of the copied config stay right from their new folder
        if isinstance(section.get(key), str) and not Path(section[key]).is_absolute():
            section[key] = _relative(source / section[key], dest_abs)
    values: dict[str, Any] = {}
    if dataset_path is not None:
        values["dataset_path"] = Path(dataset_path)
    for text_override in overrides or []:
        key, value = parse_override(text_override)
        values[key] = value
    for key, value in values.items():
        if key in PATH_KEYS and value is not None:
            value = _relative(Path(value), dest_abs)
        section[key] = value
    header = (f"# Made by python -m unet.new_experiment from {_relative(source, dest_abs)}/config.yaml"
              f"{' with ' + ', '.join(sorted(values)) + ' set' if values else ''}.\n")
    body = yaml.safe_dump({"UNET": section}, sort_keys=False)

    dest_abs.mkdir()
    try:
        (dest_abs / "config.yaml").write_text(header + body, encoding="utf-8")
        (dest_abs / trainer.name).symlink_to(os.path.relpath(target, dest_abs))
        cfg = load_config(recipe.base_config, dest_abs / "config.yaml", "UNET", absolute_overrides([], recipe),
                          recipe.extra_keys)
    except BaseException:
        shutil.rmtree(dest_abs, ignore_errors=True)
        raise
    notes = crop_notes(cfg)
    return {"config": dest / "config.yaml", "trainer": dest / trainer.name, "target": os.path.relpath(target, dest_abs),
            "values": {k: section[k] for k in values}, "dataset_path": section.get("dataset_path"), "notes": notes}


def crop_notes(cfg: Any) -> list[str]:
    """Notes on ``crop_size`` against the prepared images of ``cfg.dataset_path`` (its
    ``prepare.json``): a crop smaller than the images trains on their centre only, one larger
    pads them with 0."""
    path = Path(cfg.dataset_path)
    try:
        info = json.loads((path / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [] if path.is_dir() else [f"note: {path} does not exist yet; prepare the data there before training"]
    size = info.get("image_size") or info.get("size")
    if size is None and isinstance(info.get("input_shape"), list) and not info.get("crop") and not info.get("resize"):
        size = info["input_shape"][1:]
    if not (isinstance(size, list) and len(size) == 2):
        return []
    crop = [int(v) for v in cfg.crop_size]
    if crop[0] < int(size[0]) or crop[1] < int(size[1]):
        fit = [int(size[0]) // 8 * 8, int(size[1]) // 8 * 8]
        return [f"note: crop_size {crop} is smaller than the prepared images ({size[0]} x {size[1]}): training sees "
                f"only their centre; add -o crop_size=[{fit[0]},{fit[1]}] (multiples of 8) to train on whole images"]
    if crop[0] > int(size[0]) + 7 or crop[1] > int(size[1]) + 7:
        fit = [-(-int(size[0]) // 8) * 8, -(-int(size[1]) // 8) * 8]
        return [f"note: crop_size {crop} is larger than the prepared images ({size[0]} x {size[1]}): they are padded "
                f"with 0; -o crop_size=[{fit[0]},{fit[1]}] fits them"]
    return []


def main(argv: list[str] | None = None) -> int:
    """Make the folder and print what was made and the command that trains it; 2 on a user error."""
    args = build_parser().parse_args(argv)
    try:
        made = make_experiment(args.source, args.dest, args.dataset_path, args.override)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    set_keys = ", ".join(f"{k}: {v}" for k, v in made["values"].items())
    print(f"made {args.dest}/: config.yaml from {args.source}/config.yaml"
          + (f" ({set_keys})" if set_keys else f" (dataset_path: {made['dataset_path']})")
          + f", {made['trainer'].name} -> {made['target']}")
    for note in made["notes"]:
        print(note)
    print(f"train it: cd {args.dest} && python {made['trainer'].name} -f config.yaml -t UNET")
    return 0


__all__ = ["build_parser", "crop_notes", "main", "make_experiment"]

if __name__ == "__main__":
    sys.exit(main())
