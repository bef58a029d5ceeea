"""The three trainers through their real command line, on small generated data in the real
file formats (prepared by the real preparation commands).

Checks that need no process of their own (every experiment folder's config trains, a typo is
refused) call the trainer's entry point, :func:`unet.cli.main`, in this process from the
experiment folder; one real subprocess per trainer keeps the command line itself covered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from ..conftest import REPO, run_command
from ..helpers.experiments import make_experiment, read_metrics, train, train_in_process

pytestmark = pytest.mark.slow

TINY = ["-o", "base_channels=2", "-o", "num_epochs=1"]


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small EM, GM and NIH datasets written by the preparation commands' synthetic modes."""
    root = tmp_path_factory.mktemp("data")
    commands = {
        "em": ["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "8", "--synthetic-size",
               "128", "--resize", "64", "--crop", "48", "--out", str(root / "em")],
        "gm": ["preprocessing/gm_prepare.py", "--synthetic", "--size", "40", "--slices", "4",
               "--out", str(root / "gm")],
        "nih": ["preprocessing/nih_prepare.py", "--synthetic", "--synthetic-cases", "3", "--synthetic-shape", "96",
                "96", "12", "--no-progress", "--out", str(root / "nih")],
    }
    for args in commands.values():
        result = run_command(args, cwd=REPO)
        assert result.returncode == 0, result.stderr
    return {name: root / name for name in commands}


def data_overrides(dataset: str, data: dict[str, Path]) -> list[str]:
    crop = {"em": "[48,48]", "gm": "[64,64]", "nih": "[112,176]"}[dataset]
    return ["-o", f"dataset_path={data[dataset]}", "-o", f"crop_size={crop}", "-o", "batch_size=4",
            "-o", "val_batch_size=4"]


def test_em_run_folder_is_complete(tmp_path: Path, data: dict[str, Path]) -> None:
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    result = train(folder, "-o", "base_channels=4", "-o", "num_epochs=2", "-o", "overlay_every=1",
                   *data_overrides("em", data))
    assert result.returncode == 0, result.stderr
    run = folder / "runs" / "exp"
    assert "epoch 2/2" in result.stdout and "device: CPU" in result.stdout
    assert "%|" not in result.stderr  # progress bars only on a terminal (tests/train/test_progress_bars.py)
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in ("epoch", "train_loss", "val_loss", "dice", "lr", "seconds", "rand_error", "pixel_error"):
        assert column in rows[0]
    assert float(rows[0]["lr"]) == pytest.approx(1e-3)
    saved = yaml.safe_load((run / "config.yaml").read_text())["UNET"]
    assert saved["quantization"] == "fixed" and saved["num_epochs"] == 2 and saved["fixed_rounding"] == "pow2"
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and {"model", "optimizer", "scheduler", "config", "beta", "rng"} <= set(last)
    best = torch.load(run / "best.pt", weights_only=True)
    best_epoch = max(rows, key=lambda r: float(r["dice"]))["epoch"]
    assert best["epoch"] == int(best_epoch)
    assert (run / "overlays" / "epoch_001.png").stat().st_size > 1000
    assert (run / "overlays" / "epoch_002.png").is_file()
    assert "device: CPU" in (run / "train.log").read_text()
    assert json.loads((run / "summary.json").read_text())["finished"] is True
    assert not list(run.glob(".*tmp"))  # no temporary files left behind

    # inference and visualize on that best.pt
    result = train(folder, "-o", "base_channels=4", "-o", "operation_mode=inference", *data_overrides("em", data))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "inference" / "best_t0.999_bn-train" / "metrics.json").read_text())
    assert metrics["epoch"] == int(best_epoch) and 0 <= metrics["dice"] <= 100
    assert "inference: dice" in result.stdout
    slices = read_metrics(run / "inference" / "best_t0.999_bn-train" / "slices.csv")
    assert len(slices) == metrics["n_slices"]
    assert metrics["hausdorff_one_empty"] == sum(float(r["hausdorff_one_empty"]) for r in slices)
    result = train(folder, "-o", "base_channels=4", "-o", "operation_mode=visualize", *data_overrides("em", data))
    assert result.returncode == 0, result.stderr
    assert (run / "weights_best.png").stat().st_size > 10_000
    assert read_metrics(run / "metrics.csv") == rows  # neither mode trained


def test_same_config_gives_the_same_metrics_twice(tmp_path: Path, data: dict[str, Path]) -> None:
    folder = make_experiment(tmp_path, "em", "ternary")
    runs = []
    for name in ("a", "b"):
        result = train(folder, *TINY, "-o", "num_epochs=2", "-o", f"experiment_name={name}",
                       *data_overrides("em", data))
        assert result.returncode == 0, result.stderr
        runs.append([{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(folder / "runs" / name /
                                                                                            "metrics.csv")])
    assert runs[0] == runs[1]
    assert runs[0][0]["beta"] == "3.0" and runs[0][1]["beta"] == "8.0"


def test_existing_run_is_refused_then_new_run_numbered(tmp_path: Path, data: dict[str, Path]) -> None:
    folder = make_experiment(tmp_path, "em", "full_precision")
    assert train(folder, *TINY, *data_overrides("em", data)).returncode == 0
    before = (folder / "runs" / "exp" / "metrics.csv").read_text()
    result = train(folder, *TINY, *data_overrides("em", data))
    assert result.returncode == 2
    assert "already holds a finished run" in result.stderr and "--new-run" in result.stderr
    assert (folder / "runs" / "exp" / "metrics.csv").read_text() == before
    result = train(folder, *TINY, "--new-run", *data_overrides("em", data))
    assert result.returncode == 0, result.stderr
    assert (folder / "runs" / "exp-2" / "best.pt").is_file()
    # retrain from the first run's best model into a third folder
    result = train(folder, *TINY, "--new-run", "-o", "operation_mode=retrain", *data_overrides("em", data))
    assert result.returncode == 0, result.stderr
    assert "retrain: weights from" in result.stdout and (folder / "runs" / "exp-3" / "last.pt").is_file()


def test_misspelled_key_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("quantization:", "quantizaton:"))
    assert train_in_process(monkeypatch, folder) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "quantizaton" in lines[0] and str(config.resolve()) in lines[0]
    assert lines[0].startswith("error: ") and "Traceback" not in captured.err and captured.out == ""
    assert not (folder / "runs").exists()


def test_missing_data_says_what_to_run(tmp_path: Path) -> None:
    folder = make_experiment(tmp_path, "nih", "a6.0_w0.4")
    result = train(folder, "-o", f"dataset_path={tmp_path / 'nothing'}")
    assert result.returncode == 2
    assert "preprocessing/nih_prepare.py --synthetic" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_inference_without_a_checkpoint_is_refused(tmp_path: Path, data: dict[str, Path]) -> None:
    folder = make_experiment(tmp_path, "em", "bnn")
    result = train(folder, "-o", "operation_mode=inference", *data_overrides("em", data))
    assert result.returncode == 2 and "best.pt does not exist" in result.stderr


@pytest.mark.parametrize("dataset", ["gm", "nih"])
def test_gm_and_nih_run_folders(tmp_path: Path, data: dict[str, Path], dataset: str) -> None:
    folder = make_experiment(tmp_path, dataset, "a6.0_w0.4")
    result = train(folder, "-o", "base_channels=4", "-o", "num_epochs=2", *data_overrides(dataset, data))
    assert result.returncode == 0, result.stderr
    run = folder / "runs" / "exp"
    rows = read_metrics(run / "metrics.csv")
    assert len(rows) == 2 and "rand_error" not in rows[0]
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine
    for name in ("best.pt", "last.pt", "config.yaml", "train.log", "summary.json", "overlays/epoch_002.png"):
        assert (run / name).is_file(), name


EXPERIMENTS = sorted(
    (p.parent.parent.name, p.parent.name) for p in REPO.glob("*/*/config.yaml") if p.parent.parent.name in
    ("em", "gm", "nih")
)


#: Experiments run as a real subprocess, one per trainer; the others run in-process.
THROUGH_THE_COMMAND_LINE = {("em", "quickstart"), ("gm", "quickstart"), ("nih", "quickstart")}


@pytest.mark.parametrize(("dataset", "experiment"), EXPERIMENTS, ids=["/".join(e) for e in EXPERIMENTS])
def test_every_experiment_starts_training_from_its_folder(
    tmp_path: Path, data: dict[str, Path], dataset: str, experiment: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python <trainer> -f config.yaml -t UNET`` from the real folder: through its symlink in a
    subprocess for each trainer's quick start, in-process (:func:`train_in_process`) for the rest."""
    folder = REPO / dataset / experiment
    args = [*TINY, "-o", f"log_output_dir={tmp_path}", *data_overrides(dataset, data)]
    if (dataset, experiment) in THROUGH_THE_COMMAND_LINE:
        result = train(folder, *args)
        status, stderr = result.returncode, result.stderr
    else:
        status = train_in_process(monkeypatch, folder, *args)
        stderr = capsys.readouterr().err
    assert status == 0, stderr
    assert len(read_metrics(tmp_path / experiment / "metrics.csv")) == 1


def test_one_experiment_per_trainer_runs_through_the_command_line() -> None:
    assert THROUGH_THE_COMMAND_LINE <= set(EXPERIMENTS)
    assert {dataset for dataset, _ in THROUGH_THE_COMMAND_LINE} == {"em", "gm", "nih"}
