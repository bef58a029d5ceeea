"""Inference cannot silently evaluate a different model (issue 17 item 3): the model-defining keys
come from the checkpoint, a command that sets one to another value exits 2 naming it; each
inference keeps its own results (checkpoint, threshold, BatchNorm mode); retrain records its
source checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from ..helpers.experiments import TINY, make_experiment, prepare_synthetic_em, trainer_in_process


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A FIXED (Q6.0 / Q0.4 pow2) run of 1 epoch at base_channels 4, in experiment folder ``exp``."""
    root = tmp_path_factory.mktemp("lock")
    data = prepare_synthetic_em(root / "em")
    folder = make_experiment(root)
    with pytest.MonkeyPatch.context() as patch:
        assert trainer_in_process(patch, folder, ["-f", "config.yaml", *TINY, "-o", f"dataset_path={data}",
                                                  "-o", "num_epochs=1", "-o", "overlay_every=5"]) == 0
    return {"root": root, "data": data, "folder": folder, "run": folder / "runs" / "exp"}


def infer(patch: pytest.MonkeyPatch, trained: dict[str, Path], folder: Path | None = None, *args: str) -> int:
    """Inference from ``folder`` (default the training experiment) on the tiny data; no base_channels given."""
    return trainer_in_process(patch, folder or trained["folder"], [
        "-f", "config.yaml", "-o", f"dataset_path={trained['data']}", "-o", "crop_size=[48,48]",
        "-o", "val_batch_size=4", "-o", "operation_mode=inference", *args])


@pytest.mark.parametrize(("override", "asked", "saved"), [
    ("quantization=BNN", "'bnn'", "'fixed'"),
    ("base_channels=8", "8", "4"),
    ("activation_i_width=4", "4", "6"),
    ("fixed_rounding=nearest", "'nearest'", "'pow2'"),
    ("activation=tanh", "'tanh'", "'relu'"),
    ("dropout=0.2", "0.2", "0.0"),
])
def test_a_command_that_changes_the_model_is_refused(
        trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        override: str, asked: str, saved: str) -> None:
    key = override.split("=")[0]
    before = sorted(p.name for p in trained["run"].iterdir())
    assert infer(monkeypatch, trained, None, "-o", override) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ")
    assert f"'{key}' is {asked} (set by -o) but the checkpoint was trained with {saved}" in err
    assert sorted(p.name for p in trained["run"].iterdir()) == before  # nothing written


def test_an_experiment_yaml_for_another_model_is_refused(
        trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    other = make_experiment(trained["root"], experiment="bnn", name="bnn_exp")
    assert infer(monkeypatch, trained, other, "-o", f"trained_model={trained['run'] / 'best.pt'}") == 2
    err = capsys.readouterr().err
    assert "'quantization' is 'bnn' (set by " + str(other / "config.yaml") in err and "'fixed'" in err


def test_model_keys_not_set_come_from_the_checkpoint_and_thresholds_do_not_overwrite(
        trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    run = trained["run"]
    # base_channels 4 is not given: the EM default (64) would not even load the weights.
    for args in (("-o", "threshold=0.5"), ("-o", "threshold=0.999"), ("-o", "threshold=0.5", "-o", "val_bn_mode=eval")):
        assert infer(monkeypatch, trained, None, *args) == 0
    capsys.readouterr()
    folders = sorted(p.name for p in (run / "inference").iterdir())
    assert folders == ["best_t0.5_bn-eval", "best_t0.5_bn-train", "best_t0.999_bn-train"]
    for name in folders:
        metrics = json.loads((run / "inference" / name / "metrics.json").read_text())
        assert f"best_t{metrics['threshold']}_bn-{metrics['val_bn_mode']}" == name
        assert metrics["checkpoint"] == str((run / "best.pt").resolve())
        assert (run / "inference" / name / "overlay.png").is_file()
        assert (run / "inference" / name / "slices.csv").is_file()
    with open(run / "inference.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["threshold"], r["val_bn_mode"]) for r in rows] == [("0.5", "train"), ("0.999", "train"),
                                                                   ("0.5", "eval")]
    assert rows[0]["dice"] != rows[1]["dice"]  # the thresholds really differ
    assert not (run / "inference_metrics.json").exists()


def test_visualize_takes_the_model_from_the_checkpoint(
        trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    args = ("-o", "operation_mode=visualize")
    assert infer(monkeypatch, trained, None, *args) == 0
    assert (trained["run"] / "weights_best.png").stat().st_size > 10_000
    assert infer(monkeypatch, trained, None, *args, "-o", "weight_f_width=2") == 2
    assert "'weight_f_width' is 2 (set by -o) but the checkpoint was trained with 4" in capsys.readouterr().err


def test_retrain_records_its_source_checkpoint(trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_experiment(trained["root"], experiment="bnn", name="retrain_exp")
    source = trained["run"] / "best.pt"
    assert trainer_in_process(monkeypatch, folder, [
        "-f", "config.yaml", *TINY, "-o", f"dataset_path={trained['data']}", "-o", "num_epochs=1",
        "-o", "operation_mode=retrain", "-o", f"trained_model={source}"]) == 0
    saved = yaml.safe_load((folder / "runs" / "retrain_exp" / "config.yaml").read_text())["UNET"]
    assert saved["trained_model"] == str(source.resolve())
    assert saved["quantization"] == "bnn"  # retrain may change the quantization (float-then-quantize)
