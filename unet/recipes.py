"""The dataset recipes (EM, GM, NIH) and their base configs, shipped inside the package.

:data:`RECIPES` maps a dataset name to its :class:`~unet.recipe.Recipe`, whose ``base_config`` is
the packaged copy (``unet/configs/<dataset>.yaml``, read through :mod:`importlib.resources`).

Which base config wins: a trainer (``EM_BASE/em_unet.py`` and the experiment links to it) reads
the ``config.yaml`` beside the trainer file, so a user's edit of ``EM_BASE/config.yaml`` takes
effect, and the sweep, the results and ``new_experiment`` resolve an experiment the same way
(:func:`recipe_for_trainer`). Code with no trainer at hand (predict's defaults under a
checkpoint's stored config, the README's config table) reads the packaged copy. A test keeps
``<DATASET>_BASE/config.yaml`` equal to the packaged one. (A relative path in a base config
resolves against its own folder, so the packaged copy's ``dataset_path: ../data/em`` means the
repository's ``data/em`` only when read from ``EM_BASE``: a run always goes through a trainer.)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .config import GM_KEYS, Config
from .configs import DATASETS, packaged_config
from .data.gm import GMDataset
from .data.pairs import PngPairDataset
from .errors import ConfigError, UserError
from .recipe import Recipe

_PREPARE = {
    "EM": "python preprocessing/em_prepare.py --synthetic (or --volume train-volume.tif "
    "--labels train-labels.tif for the ISBI 2012 data)",
    "GM": "python preprocessing/gm_prepare.py --synthetic (or point dataset_path at the SCGM "
    "training release; check it with python preprocessing/gm_prepare.py --release DIR)",
    "NIH": "python preprocessing/nih_prepare.py --synthetic (or --images DIR --labels DIR for "
    "NIH Pancreas-CT)",
}

def png_pair_recipe(name: str, base_config: Path, prepare_command: str, isbi_metrics: bool = False) -> Recipe:
    """A recipe whose data is a prepared PNG-pair folder (``dataset_path/{train,val}``): EM and NIH."""

    def build(split: str):
        def builder(cfg: Config) -> PngPairDataset:
            return PngPairDataset(cfg.dataset_path, split, tuple(cfg.crop_size), cfg.normalize)

        return builder

    return Recipe(
        name=name,
        base_config=base_config,
        build_train=build("train"),
        build_val=build("val"),
        prepare_command=prepare_command,
        isbi_metrics=isbi_metrics,
    )


def gm_recipe(base_config: Path, prepare_command: str) -> Recipe:
    """The SCGM grey-matter recipe: NIfTI release read directly, training slices without
    grey matter dropped, validation slices all kept, online augmentation when ``augment``."""

    def build(subjects_key: str, train: bool):
        def builder(cfg: Config) -> GMDataset:
            overlap = sorted(set(cfg.train_subjects) & set(cfg.val_subjects))
            if overlap:
                raise ConfigError(f"{cfg.sources['val_subjects']}: subjects {overlap} are in both "
                                  "train_subjects and val_subjects")
            return GMDataset(
                cfg.dataset_path,
                subjects=cfg[subjects_key],
                sites=cfg.sites,
                drop_empty=train,
                crop_size=tuple(cfg.crop_size),
                normalize=cfg.normalize,
                augment=train and cfg.augment,
                resolution_mm=cfg.resolution_mm,
            )

        return builder

    return Recipe(
        name="GM",
        base_config=base_config,
        build_train=build("train_subjects", True),
        build_val=build("val_subjects", False),
        prepare_command=prepare_command,
        extra_keys=GM_KEYS,
    )


def _recipe(dataset: str, base_config: Path) -> Recipe:
    """``dataset``'s recipe over ``base_config``."""
    if dataset == "GM":
        return gm_recipe(base_config, _PREPARE["GM"])
    return png_pair_recipe(dataset, base_config, _PREPARE[dataset], isbi_metrics=dataset == "EM")


#: Dataset name -> its recipe over the packaged base config.
RECIPES: dict[str, Recipe] = {name: _recipe(name, packaged_config(name)) for name in DATASETS}


def trainer_dataset(trainer: Path | str) -> str:
    """The dataset a trainer file is for, from its name (links followed): ``em_unet.py`` -> ``EM``.

    Raises :class:`UserError` for a name that is not ``<dataset>_unet.py`` of a known dataset.
    """
    path = Path(trainer)
    names = [path.name, path.resolve().name] if path.exists() else [path.name]
    for name in names:
        stem = name.removesuffix(".py")
        if name.endswith(".py") and stem.endswith("_unet") and stem.removesuffix("_unet").upper() in RECIPES:
            return stem.removesuffix("_unet").upper()
    known = ", ".join(f"{d.lower()}_unet.py" for d in DATASETS)
    raise UserError(f"trainer {path}: not a trainer of a known dataset (expected one of {known})")


def recipe_for_trainer(trainer: Path | str, dataset: str | None = None) -> Recipe:
    """The recipe a trainer file runs: its dataset's (``dataset``, else from the file's name), over
    the ``config.yaml`` beside the file the trainer link resolves to (``EM_BASE/config.yaml`` for a
    link to ``EM_BASE/em_unet.py``)."""
    dataset = dataset or trainer_dataset(trainer)
    return dataclasses.replace(RECIPES[dataset], base_config=Path(trainer).resolve().parent / "config.yaml")


__all__ = ["DATASETS", "RECIPES", "gm_recipe", "packaged_config", "png_pair_recipe", "recipe_for_trainer",
           "trainer_dataset"]
