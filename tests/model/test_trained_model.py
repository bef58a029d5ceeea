"""The one loader of a trained model (:class:`unet.trained.TrainedModel`): run folder or file,
weights, config, dataset, input-transform and BatchNorm records, eval mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unet.checkpoint import load_checkpoint
from unet.config import Config
from unet.errors import ConfigError, DataError
from unet.trained import TrainedModel

MODE = "wrap_q6.0_q0.4"


def test_a_run_folder_and_its_best_pt_load_the_same_trained_model(trained_em) -> None:
    run = trained_em.run_dir(MODE)
    trained = TrainedModel.load(run)
    again = TrainedModel.load(run / "best.pt")
    state = load_checkpoint(run / "best.pt")
    assert trained.path == again.path == run / "best.pt"
    assert not any(m.training for m in trained.model.modules())  # eval mode throughout
    assert trained.dataset == "EM" and trained.input_transform == state["input_transform"]
    assert trained.batchnorm_statistics == state.get("batchnorm_statistics")
    assert trained.config["base_channels"] == 4 and trained.config["quantization"] == "fixed"
    weights = trained.model.state_dict()
    assert weights.keys() == state["model"].keys()
    assert all(torch.equal(weights[k], state["model"][k]) for k in weights)
    x = trained_em.validation()
    with torch.no_grad():
        assert torch.equal(trained.model(x), again.model(x))


def test_a_given_config_takes_the_model_keys_from_the_checkpoint(trained_em) -> None:
    run = trained_em.run_dir(MODE)
    stored = dict(TrainedModel.load(run).config)
    unset = Config({**stored, "base_channels": 8}, {})
    assert TrainedModel.load(run, unset).config["base_channels"] == 4
    set_by_command = Config({**stored, "base_channels": 8}, {"base_channels": "-o"})
    with pytest.raises(ConfigError, match="'base_channels' is 8 \\(set by -o\\)"):
        TrainedModel.load(run, set_by_command, defaults_source="base config")


def test_a_run_folder_without_best_pt_and_a_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no best.pt"):
        TrainedModel.load(tmp_path)
    with pytest.raises(DataError, match="nope.pt does not exist"):
        TrainedModel.load(tmp_path / "nope.pt")
