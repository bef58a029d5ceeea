"""BatchNorm statistics recomputed for the checkpoint's weights, both Dice figures logged, and the
warning for checkpoints whose statistics were not recomputed (through the real commands)."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from quantizer import QuantSpec
from unet.batchnorm import (
    RECALIBRATED,
    batchnorm_buffers,
    batchnorm_layers,
    deterministic_view,
    needs_deployment_warning,
    recalibrate_batchnorm,
)
from unet.checkpoint import load_checkpoint
from unet.metrics import slice_metrics
from unet.model import UNet

from ..conftest import REPO, run_command
from ..helpers.experiments import make_experiment, prepare_synthetic_em, trainer_in_process

SATURATE = QuantSpec(kind="fixed", i_bits=6, f_bits=0, rounding="nearest", overflow="saturate")
WEIGHTS = QuantSpec(kind="fixed", i_bits=0, f_bits=4, rounding="nearest", overflow="saturate")


class Images(Dataset):
    """``n`` random (image, mask) pairs; with ``augment`` each item draws from torch's global RNG;
    ``grouped``: two groups of very unlike images, one after the other."""

    def __init__(self, n: int, size: int = 16, augment: bool = False, grouped: bool = False) -> None:
        generator = torch.Generator().manual_seed(3)
        self.images = torch.rand(n, 1, size, size, generator=generator) * 2
        if grouped:  # like slices ordered by case: the first half dark, the rest bright
            self.images = self.images * 0.1 + (torch.arange(n) >= n // 2).float().view(n, 1, 1, 1) * 1.8
        self.augment = augment
        self.draws = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment:
            self.draws += 1
            image = image + torch.rand(()) * 0.1
        return image, (image > 1).float()


def tiny_model(dropout: float = 0.0) -> UNet:
    torch.manual_seed(0)
    return UNet(4, WEIGHTS, SATURATE, "relu", dropout).to(memory_format=torch.channels_last)


def test_recalibrated_statistics_are_the_mean_and_variance_over_every_pixel_of_the_data() -> None:
    model = tiny_model()
    data = Images(7, grouped=True)  # batches of 3, 3 and 1 sample(s); consecutive samples alike
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(
        args[0].detach().clone())) for name, layer in batchnorm_layers(model)]
    record = recalibrate_batchnorm(model, data, 3, torch.device("cpu"), show_progress=False)
    for hook in hooks:
        hook.remove()
    assert record["method"] == RECALIBRATED and record["samples"] == 7 and record["batches"] == 3
    assert len(seen) == len(batchnorm_layers(model)) >= 14
    spread = []
    for name, layer in batchnorm_layers(model):
        inputs = seen[name]
        assert [len(x) for x in inputs] == [3, 3, 1]
        pooled = torch.cat(inputs).double().transpose(0, 1).reshape(layer.num_features, -1)
        torch.testing.assert_close(layer.running_mean.double(), pooled.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var.double(), pooled.var(1, unbiased=True), rtol=1e-5, atol=1e-6)
        assert int(layer.num_batches_tracked) == 3
        per_batch = torch.stack([x.double().var(dim=(0, 2, 3)) for x in inputs]).mean(0)
        spread.append(float((pooled.var(1) - per_batch).max()))
    # the data makes the difference that matters: an average of per-batch variances misses the
    # spread between batches of unlike samples
    assert max(spread) > 0.1


def test_the_batches_are_shuffled_by_their_own_seed() -> None:
    orders = []
    for seed in (0, 0, 1):
        data = Images(8)
        firsts: list[float] = []
        model = tiny_model()
        layer = batchnorm_layers(model)[0][1]
        hook = layer.register_forward_pre_hook(lambda m, args, out=firsts: out.append(float(args[0][:, 0].mean())))
        recalibrate_batchnorm(model, data, 2, torch.device("cpu"), seed=seed, show_progress=False)
        hook.remove()
        orders.append(firsts)
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_recalibration_leaves_modes_momenta_and_every_rng_as_they_were() -> None:
    model = tiny_model(dropout=0.3)
    model.train()
    data = Images(5, augment=True)
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the legacy global RNG is what is checked
    torch.manual_seed(3)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())  # noqa: NPY002
    before = batchnorm_buffers(model)
    recalibrate_batchnorm(model, data, 2, torch.device("cpu"), augment=True, show_progress=False)
    assert data.draws == 5  # augmented: every item drew from the global RNG ...
    assert random.getstate() == states[0]  # ... and every RNG is back where it was
    assert np.array_equal(np.random.get_state()[1], states[1])  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), states[2])
    assert all(m.training for m in model.modules())
    assert all(layer.momentum == 0.1 for _, layer in batchnorm_layers(model))
    after = batchnorm_buffers(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)

    plain = Images(5, augment=True)
    recalibrate_batchnorm(model, plain, 2, torch.device("cpu"), show_progress=False)
    assert plain.draws == 0 and plain.augment  # no augmentation by default; the dataset itself untouched
    assert deterministic_view(plain) is not plain


def test_dropout_is_off_while_the_statistics_are_recomputed() -> None:
    with_dropout, without = tiny_model(dropout=0.5), tiny_model(dropout=0.0)
    without.load_state_dict(with_dropout.state_dict())
    for model in (with_dropout, without):
        recalibrate_batchnorm(model, Images(4), 2, torch.device("cpu"), show_progress=False)
    a, b = batchnorm_buffers(with_dropout), batchnorm_buffers(without)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("record", "val_mode", "warn"), [
    (None, "train", True), ({"method": "training moving averages"}, "train", True),
    ({"method": RECALIBRATED}, "train", False), (None, "eval", False)])
def test_the_warning_is_for_batch_statistics_runs_whose_statistics_were_not_recomputed(record, val_mode,
                                                                                       warn) -> None:
    state = {"model": {}, "config": {"val_bn_mode": val_mode}}
    if record is not None:
        state["batchnorm_statistics"] = record
    assert needs_deployment_warning(state) is warn


# --- through the real trainer, predict and export -------------------------------------------

#: A model whose moving averages lag its weights: one epoch of 3 steps at a high learning rate.
LAGGING = ["-o", "base_channels=4", "-o", "crop_size=[48,48]", "-o", "batch_size=2", "-o", "val_batch_size=2",
           "-o", "num_epochs=1", "-o", "fixed_rounding=nearest", "-o", "fixed_overflow=saturate",
           "-o", "threshold=0.5", "-o", "lr=0.05"]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def train(folder: Path, data: Path, name: str, *extra: str) -> Path:
    result = run_command(["em_unet.py", "-f", "config.yaml", "-t", "UNET", "-o", f"dataset_path={data}",
                          "-o", f"experiment_name={name}", *LAGGING, *extra], cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    return folder / "runs" / name


def mean_dice(masks: Path, data: Path) -> float:
    """Mean Dice (x100) of predict's masks against the prepared validation labels."""
    scores = []
    for truth_path in sorted((data / "val" / "masks").glob("*.png")):
        truth = np.asarray(Image.open(truth_path)) > 0
        predicted = np.asarray(Image.open(masks / truth_path.name)) > 0
        scores.append(slice_metrics(predicted.astype(np.float32), truth.astype(np.float32), 0.5)["dice"])
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def lagging(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bnrecal")
    data = prepare_synthetic_em(root / "em")
    folder = make_experiment(root, experiment="quickstart")
    return {"data": data, "folder": folder, "off": train(folder, data, "recal_false", "-o", "bn_recalibration=false"),
            "on": train(folder, data, "recal_true")}


@pytest.mark.slow
def test_recalibration_closes_the_gap_between_the_logged_and_the_deployed_dice(lagging) -> None:
    off, on = read_rows(lagging["off"] / "metrics.csv")[0], read_rows(lagging["on"] / "metrics.csv")[0]
    # the gap made on purpose: batch statistics score far above the lagging running ones
    assert float(off["dice"]) - float(off["eval_dice"]) > 30, off
    # recomputed statistics: the deployed model within a few points of the protocol's figure
    assert abs(float(on["dice"]) - float(on["eval_dice"])) < 5, on
    # training itself is untouched: every protocol column is identical bit for bit
    protocol = [k for k in off if not k.startswith("eval_") and k != "seconds"]
    assert [off[k] for k in protocol] == [on[k] for k in protocol]
    summary = json.loads((lagging["on"] / "summary.json").read_text())
    assert summary["best_eval_dice"] == pytest.approx(float(on["eval_dice"]), abs=1e-9)
    assert summary["bn_recalibration"] == "true"


@pytest.mark.slow
def test_checkpoints_record_how_their_statistics_were_made(lagging) -> None:
    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(lagging["on"] / name)
        record = state["batchnorm_statistics"]
        assert record["method"] == RECALIBRATED and record["samples"] == 6 and record["augmented"] is False
        training = state["training_batchnorm"]
        assert any(not torch.equal(training[k], state["model"][k]) for k in training)
        assert float(state["metrics"]["eval_dice"]) == pytest.approx(
            float(read_rows(lagging["on"] / "metrics.csv")[0]["eval_dice"])) if name == "best.pt" else True
    off = load_checkpoint(lagging["off"] / "best.pt")
    assert off["batchnorm_statistics"]["method"] == "training moving averages"
    assert "training_batchnorm" not in off


@pytest.mark.slow
@pytest.mark.parametrize("run", ["off", "on"])
def test_predict_and_the_integer_engine_give_the_logged_eval_dice(lagging, run: str, tmp_path: Path) -> None:
    logged = float(read_rows(lagging[run] / "metrics.csv")[0]["eval_dice"])
    images = lagging["data"] / "val" / "images"
    outputs = {}
    for engine in ("float", "integer"):
        out = tmp_path / engine
        result = run_command(["-m", "unet.predict", "-m", str(lagging[run]), "-i", str(images), "-o", str(out),
                              "--prepared", "--engine", engine, "--no-progress"], cwd=REPO)
        assert result.returncode == 0, result.stderr
        assert ("was not measured" in result.stderr or "were not recomputed" in result.stderr) is (run == "off")
        outputs[engine] = out
    assert mean_dice(outputs["float"], lagging["data"]) == pytest.approx(logged, abs=1e-6)
    for mask in sorted(outputs["float"].glob("*.png")):
        assert np.array_equal(np.asarray(Image.open(mask)), np.asarray(Image.open(outputs["integer"] / mask.name)))


@pytest.mark.slow
def test_export_and_inference_warn_only_without_recomputed_statistics(lagging, tmp_path: Path) -> None:
    for run in ("off", "on"):
        result = run_command(["-m", "unet.export", str(lagging[run]), "-o", str(tmp_path / f"{run}.uqp")], cwd=REPO)
        assert result.returncode == 0, result.stderr
        warned = "were not recomputed" in result.stderr
        assert warned is (run == "off"), result.stderr
        if warned:
            assert "val_bn_mode: train" in result.stderr and "--bn-mode train" in result.stderr
    result = run_command(["em_unet.py", "-f", "config.yaml", "-t", "UNET", "-o", f"dataset_path={lagging['data']}",
                          "-o", "experiment_name=recal_false", *LAGGING, "-o", "bn_recalibration=false",
                          "-o", "operation_mode=inference"], cwd=lagging["folder"])
    assert result.returncode == 0, result.stderr
    assert "were not recomputed" in result.stdout
    metrics = json.loads(next((lagging["off"] / "inference").glob("*/metrics.json")).read_text())
    logged = read_rows(lagging["off"] / "metrics.csv")[0]
    assert metrics["eval_dice"] == pytest.approx(float(logged["eval_dice"]), abs=1e-6)
    assert metrics["dice"] == pytest.approx(float(logged["dice"]), abs=1e-6)


@pytest.mark.slow
def test_a_resumed_run_goes_on_with_the_statistics_training_had(tmp_path: Path) -> None:
    """With eval-mode validation the moving averages shape every logged Dice, so a resume that took
    the checkpoint's recomputed statistics instead would log other figures."""
    data = prepare_synthetic_em(tmp_path / "em")
    folder = make_experiment(tmp_path, experiment="quickstart")
    args = ["-o", "val_bn_mode=eval", "-o", "num_epochs=8", "-o", f"dataset_path={data}"]
    whole = train(folder, data, "whole", *args)
    trainer = [sys.executable, "em_unet.py", "-f", "config.yaml", "-t", "UNET", "-o", f"dataset_path={data}",
               "-o", "experiment_name=cut", *LAGGING, *args]
    process = subprocess.Popen(trainer, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cut = folder / "runs" / "cut"
    deadline = time.monotonic() + 600
    while not ((cut / "metrics.csv").is_file() and len(read_rows(cut / "metrics.csv")) >= 1):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=600)
    if process.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert process.returncode == 130, out + err
    assert "training_batchnorm" in load_checkpoint(cut / "last.pt")
    result = run_command([*trainer[1:], "-o", "operation_mode=resume"], cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr

    def strip(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert strip(read_rows(cut / "metrics.csv")) == strip(read_rows(whole / "metrics.csv"))


@pytest.mark.slow
@pytest.mark.parametrize(("policy", "expected"), [("true", [1, 2, 3]), ("best", [1, 3]), ("false", [])])
def test_the_policy_decides_which_epochs_recompute(lagging, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   policy: str, expected: list[int]) -> None:
    """With a learning rate below float32's resolution of the weights the Dice cannot improve
    after epoch 1, so only epoch 1 writes a best.pt: ``best`` recomputes for it and for the last
    epoch's last.pt, ``true`` for every epoch."""
    from unet.train import validation

    epochs: list[int] = []
    real = validation.recalibrate_batchnorm

    def counting(*args, **kwargs):
        epochs.append(int(kwargs["desc"].split()[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(validation, "recalibrate_batchnorm", counting)
    folder = make_experiment(tmp_path, experiment="quickstart")
    args = ["-f", "config.yaml", "-t", "UNET", "-o", f"dataset_path={lagging['data']}", *LAGGING,
            "-o", "num_epochs=3", "-o", "lr=1e-12", "-o", f"bn_recalibration={policy}"]
    assert trainer_in_process(monkeypatch, folder, args) == 0
    run = folder / "runs" / folder.name
    rows = read_rows(run / "metrics.csv")
    assert len({r["dice"] for r in rows}) == 1, rows
    assert epochs == expected
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert best["epoch"] == 1 and last["epoch"] == 3
    recalibrated = policy != "false"
    assert (best["batchnorm_statistics"]["method"] == RECALIBRATED) is recalibrated
    assert (last["batchnorm_statistics"]["method"] == RECALIBRATED) is recalibrated
    assert json.loads((run / "summary.json").read_text())["bn_recalibration"] == policy
