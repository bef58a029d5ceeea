"""Dataset recipes shared by more than one trainer."""

from __future__ import annotations

from pathlib import Path

from .config import GM_KEYS, Config
from .data.gm import GMDataset
from .data.pairs import PngPairDataset
from .errors import ConfigError
from .recipe import Recipe


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
