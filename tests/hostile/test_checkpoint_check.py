"""Class 4 (core) and 6 of issue 23: one validation of a checkpoint's structure and value ranges,
shared by every loader. Each tampered checkpoint is refused by predict, export and the trainer's
inference mode alike with one ``error:`` line naming the checkpoint and the entry, exit 2, no
traceback, and nothing written."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from unet.export.__main__ import main as export_main
from unet.predict.cli import main as predict_main

from .helpers import digest, error_line, png, tiny_state, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    return tiny_state("EM")


def _first(state: dict[str, Any], leaf: str) -> str:
    return next(k for k in state["model"] if k.endswith(leaf))


def _tamper(state: dict[str, Any], case: str) -> tuple[dict[str, Any], str]:
    """``state`` with one field tampered as ``case`` says, and the text the error must name."""
    bad = copy.deepcopy(state)
    weight = _first(bad, ".weight")
    if case == "weight_string":
        bad["model"][weight] = "not a tensor"
        return bad, weight
    if case == "model_list":
        bad["model"] = list(bad["model"].values())
        return bad, "'model' is a list"
    if case == "model_tensor":
        bad["model"] = torch.zeros(3)
        return bad, "'model' is a Tensor"
    if case == "weight_int":
        bad["model"][weight] = bad["model"][weight].to(torch.int32)
        return bad, weight
    if case == "nan_weight":
        bad["model"][weight][0].view(-1)[0] = math.nan
        return bad, "NaN"
    if case == "inf_bias":
        bias = _first(bad, ".bias")
        bad["model"][bias][0] = math.inf
        return bad, bias
    if case == "negative_var":
        var = _first(bad, "running_var")
        bad["model"][var][0] = -1.0
        return bad, var
    if case == "threshold_text":
        bad["config"]["threshold"] = "x"
        return bad, "'threshold'"
    if case == "threshold_range":
        bad["config"]["threshold"] = 7.5
        return bad, "'threshold'"
    if case == "val_batch_zero":
        bad["config"]["val_batch_size"] = 0
        return bad, "'val_batch_size'"
    if case == "base_channels_huge":
        bad["config"]["base_channels"] = 10**9
        return bad, "'base_channels'"
    if case == "crop_huge":
        bad["config"]["crop_size"] = [800000, 800000]
        return bad, "'crop_size'"
    if case == "record_no_window":
        del bad["input_transform"]["window"]
        return bad, "window"
    if case == "record_window_huge":
        bad["input_transform"]["window"] = [10**7, 16]
        return bad, "window"
    if case == "resize_factor_huge":
        bad["input_transform"]["resize_factor"] = [1e9, 1.0]
        return bad, "resize_factor"
    if case == "record_list":
        bad["input_transform"] = [1, 2]
        return bad, "input_transform"
    if case == "config_alias_bomb":
        value: Any = ["lol"] * 10
        for _ in range(7):  # 10**8 leaves if the message expanded it
            value = [value] * 10
        bad["config"]["quantization"] = value
        return bad, "'quantization'"
    raise AssertionError(case)


CASES = ["weight_string", "model_list", "model_tensor", "weight_int", "nan_weight", "inf_bias", "negative_var",
         "threshold_text", "threshold_range", "val_batch_zero", "base_channels_huge", "crop_huge",
         "record_no_window", "record_window_huge", "resize_factor_huge", "record_list", "config_alias_bomb"]


@pytest.mark.parametrize("case", CASES)
def test_predict_and_export_refuse_a_tampered_checkpoint_alike(state, tmp_path: Path, capsys, case: str) -> None:
    bad, named = _tamper(state, case)
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", bad)
    png(tmp_path / "in" / "a.png")
    before = digest(tmp_path)
    status = predict_main(["-m", str(checkpoint), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                           "--prepared", "--device", "cpu", "--no-progress"])
    predict_line = error_line(status, capsys.readouterr().err, str(checkpoint), named)
    status = export_main([str(checkpoint), "-o", str(tmp_path / "model.uqp")])
    export_line = error_line(status, capsys.readouterr().err, str(checkpoint), named)
    assert predict_line == export_line  # one shared validation: the same words
    assert digest(tmp_path) == before  # nothing written, nothing changed


def test_an_untampered_checkpoint_passes_and_predicts(state, tmp_path: Path, capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "best.pt", state)
    png(tmp_path / "in" / "a.png")
    status = predict_main(["-m", str(checkpoint), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                           "--prepared", "--device", "cpu", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "a.png").is_file()
    assert export_main([str(checkpoint), "-o", str(tmp_path / "model.uqp")]) == 0
    assert (tmp_path / "model.uqp").is_file()


def test_trainer_inference_refuses_nan_weights_through_the_same_check(state, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    from ..helpers.experiments import make_experiment, trainer_in_process

    bad, named = _tamper(state, "nan_weight")
    checkpoint = write_checkpoint(tmp_path / "tampered.pt", bad)
    folder = make_experiment(tmp_path)
    status = trainer_in_process(monkeypatch, folder, ["-f", "config.yaml", "-t", "UNET",
                                                      "-o", "operation_mode=inference", "-o", "base_channels=4",
                                                      "-o", f"trained_model={checkpoint}",
                                                      "-o", f"dataset_path={tmp_path / 'nodata'}"])
    error_line(status, capsys.readouterr().err, str(checkpoint), named)
    assert not (folder / "runs").exists()
