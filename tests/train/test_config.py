"""Config loading, merging and validation through load_config and the trainer's command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unet.config import COMMON_KEYS, GM_KEYS, load_config, parse_override
from unet.errors import ConfigError

from ..conftest import REPO

EM_BASE = REPO / "EM_BASE" / "config.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return write(tmp_path / "exp1" / "config.yaml", "UNET:\n  quantization: FIXED\n  weight_f_width: 4\n")


def test_experiment_overrides_base_and_defaults_fill_in(experiment: Path) -> None:
    cfg = load_config(EM_BASE, experiment)
    assert cfg.quantization == "fixed"
    assert cfg.weight_f_width == 4
    assert cfg.batch_size == 5 and cfg.val_batch_size == 4  # EM defaults
    assert cfg.experiment_name == "exp1"
    assert cfg.log_output_dir == experiment.parent / "runs"
    assert cfg.sources["weight_f_width"] == str(experiment.resolve())
    assert cfg.sources["batch_size"] == str(EM_BASE)


def test_relative_paths_resolve_against_the_file_that_set_them(tmp_path: Path, experiment: Path) -> None:
    cfg = load_config(EM_BASE, experiment)
    assert cfg.dataset_path == (REPO / "data" / "em").resolve()
    exp = write(tmp_path / "a" / "b" / "config.yaml", "UNET:\n  dataset_path: ../mydata\n")
    assert load_config(EM_BASE, exp).dataset_path == (tmp_path / "a" / "mydata").resolve()


def test_overrides_are_parsed_as_yaml_and_win(experiment: Path) -> None:
    cfg = load_config(EM_BASE, experiment, overrides=["num_epochs=3", "crop_size=[64, 48]", "lr=5e-3"])
    assert cfg.num_epochs == 3 and cfg.crop_size == [64, 48] and cfg.lr == pytest.approx(5e-3)
    assert cfg.sources["num_epochs"] == "-o"
    assert parse_override("trained_model=") == ("trained_model", None)


def test_quantization_is_case_insensitive(tmp_path: Path) -> None:
    exp = write(tmp_path / "e" / "config.yaml", "UNET:\n  quantization: ternary\n")
    assert load_config(EM_BASE, exp).quantization == "ternary"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quantizaton: FIXED", "unknown key 'quantizaton' (did you mean 'quantization'?)"),
        ("quantization: FLOAT8", "key 'quantization' must be one of"),
        ("weight_f_width: -1", "key 'weight_f_width' must be >= 0"),
        ("weight_f_width: 2.5", "key 'weight_f_width' must be an integer"),
        ("num_epochs: 0", "key 'num_epochs' must be >= 1"),
        ("operation_mode: train", "key 'operation_mode' must be one of"),
        ("lr: -0.1", "key 'lr' must be > 0"),
        ("lr: fast", "key 'lr' must be a number"),
        ("threshold: 1.0", "key 'threshold' must be between 0 and 1"),
        ("crop_size: [100, 100]", "multiples of 8"),
        ("crop_size: 64", "must be [H, W]"),
        ("augment: yes please", "must be true or false"),
        ("dropout: 1.0", "key 'dropout' must satisfy 0 <= value < 1"),
        ("empty_dice: 2", "key 'empty_dice' must be 0 or 1"),
        ("model_type: resnet", "key 'model_type' must be one of unet"),
        ("batch_size: null", "key 'batch_size' must be set"),
        ("quantization: INT\n  weight_i_width: 0\n  activation_i_width: 4", "'weight_i_width' must be >= 1 for INT"),
    ],
)
def test_invalid_values_name_key_and_file(tmp_path: Path, text: str, expected: str) -> None:
    exp = write(tmp_path / "e" / "config.yaml", f"UNET:\n  {text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(EM_BASE, exp)
    message = str(info.value)
    assert expected in message
    assert str(exp.resolve()) in message
    assert "\n" not in message


def test_missing_top_key_and_bad_yaml(tmp_path: Path) -> None:
    exp = write(tmp_path / "e" / "config.yaml", "MODEL:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match="no top key 'UNET' \\(found: MODEL\\); pass the right one with -t"):
        load_config(EM_BASE, exp)
    assert load_config(EM_BASE, exp, top_key="MODEL").lr == pytest.approx(0.1)
    broken = write(tmp_path / "f" / "config.yaml", "UNET:\n  lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(EM_BASE, broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(EM_BASE, tmp_path / "nope.yaml")


def test_bad_override_names_the_option(experiment: Path) -> None:
    with pytest.raises(ConfigError, match="^-o: unknown key 'epochs'"):
        load_config(EM_BASE, experiment, overrides=["epochs=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(EM_BASE, experiment, overrides=["num_epochs"])


@pytest.mark.parametrize("base", sorted(REPO.glob("*_BASE/config.yaml")), ids=lambda p: p.parent.name)
def test_every_base_config_sets_every_common_key(base: Path, tmp_path: Path) -> None:
    """Read from the file itself (load_config would refuse a base without a key: tested below)."""
    written = yaml.safe_load(base.read_text())["UNET"]
    assert {k.name for k in COMMON_KEYS} <= set(written)
    exp = write(tmp_path / "e" / "config.yaml", "UNET: {}\n")
    extra = GM_KEYS if base.parent.name == "GM_BASE" else ()
    cfg = load_config(base, exp, extra_keys=extra)
    assert all(cfg.sources[k.name] == str(base) for k in COMMON_KEYS)  # nothing filled in from elsewhere


def test_a_base_config_without_a_key_is_refused_naming_it(tmp_path: Path) -> None:
    values = yaml.safe_load(EM_BASE.read_text())
    del values["UNET"]["lr"]
    base = write(tmp_path / "BASE" / "config.yaml", yaml.safe_dump(values))
    exp = write(tmp_path / "e" / "config.yaml", "UNET: {}\n")
    with pytest.raises(ConfigError, match="missing key\\(s\\) lr") as info:
        load_config(base, exp)
    assert str(base) in str(info.value)


def test_every_experiment_config_is_valid() -> None:
    """Each experiment folder's config loads over its base (a typo there would fail here)."""
    from unet.experiments import load_recipe

    folders = [p.parent for p in REPO.glob("*/*/config.yaml") if not p.parent.parent.name.endswith("_BASE")]
    assert folders, "no experiment folders found"
    for folder in folders:
        trainer = next(folder.glob("*_unet.py"))
        assert trainer.is_symlink() and not Path(trainer.readlink()).is_absolute()
        recipe = load_recipe(trainer)
        cfg = load_config(recipe.base_config, folder / "config.yaml", extra_keys=recipe.extra_keys)
        assert cfg.experiment_name == folder.name


@pytest.mark.parametrize("dataset", ["EM", "GM", "NIH"])
def test_each_base_config_equals_the_packaged_one(dataset: str) -> None:
    """``<DATASET>_BASE/config.yaml`` (what a user reads and edits, what the trainer reads) and
    ``unet/configs/<dataset>.yaml`` (what installed code reads) are the same file."""
    from unet.configs import packaged_config

    assert (REPO / f"{dataset}_BASE" / "config.yaml").read_bytes() == packaged_config(dataset).read_bytes(), (
        f"copy {dataset}_BASE/config.yaml to unet/configs/{dataset.lower()}.yaml")


def test_a_trainer_is_known_by_its_name_and_reads_the_config_beside_it(tmp_path: Path) -> None:
    from unet.errors import UserError
    from unet.recipes import RECIPES, recipe_for_trainer, trainer_dataset

    link = tmp_path / "exp" / "gm_unet.py"
    link.parent.mkdir()
    link.symlink_to(REPO / "GM_BASE" / "gm_unet.py")
    recipe = recipe_for_trainer(link)
    assert recipe.name == "GM" and recipe.base_config == REPO / "GM_BASE" / "config.yaml"
    assert recipe.extra_keys == RECIPES["GM"].extra_keys
    with pytest.raises(UserError, match="not a trainer of a known dataset"):
        trainer_dataset(tmp_path / "xyz_unet.py")


def test_docs_config_table_matches_the_code() -> None:
    """docs/config.md's table is generated from the schema and the base configs; keep it in step."""
    from unet.config import markdown_key_table

    bases = {name: REPO / f"{name}_BASE" / "config.yaml" for name in ("EM", "GM", "NIH")}
    table = markdown_key_table(bases, GM_KEYS)
    page = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert table in page, "regenerate the table in docs/config.md: python -m unet.config --readme-table"
