"""One run on two processes (torchrun, gloo on the CPU) against the single-process arithmetic.

The runs go through the real command line (``python -m torch.distributed.run --nproc_per_node=2
--standalone em_unet.py ...``) on a tiny PNG-pair dataset: one training step of the DDP run is
recomputed here from the same initial weights on the two half-batches, its validation metrics
are compared with a single-process ``operation_mode: inference`` of its checkpoint, and an
interrupted run is resumed under torchrun.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unet import distributed
from unet.config import load_config
from unet.experiments import load_recipe
from unet.losses import get_loss
from unet.model import build_model
from unet.train.evaluation import set_validation_mode, validation_batches
from unet.train.reproducibility import seed_everything

from ..helpers.experiments import HANG_GUARD_S, make_experiment, pair_folder, read_metrics, train_in_process

pytestmark = pytest.mark.slow

N_TRAIN, N_VAL, BATCH, VAL_BATCH = 8, 5, 8, 2


def tiny(data: Path, *extra: str) -> list[str]:
    """Overrides: one optimizer step per epoch (8 slices, global batch 8 = 4 per rank), three
    validation batches of 2, 2 and 1 slices (rank 0 takes the 1st and 3rd), BatchNorm in train
    mode during validation (so a batch's statistics are its own, as in the EM recipe)."""
    return ["-o", f"dataset_path={data}", "-o", "crop_size=[32,32]", "-o", "base_channels=4",
            "-o", f"batch_size={BATCH}", "-o", f"val_batch_size={VAL_BATCH}", "-o", "lr_scheduler=constant",
            "-o", "val_bn_mode=train", "-o", "threshold=0.5", "-o", "lr=0.01", *extra]


def torchrun(folder: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
            "em_unet.py", "-f", "config.yaml", "-t", "UNET", *args]


@pytest.fixture
def one_thread():
    """Compute here as each rank does (torchrun sets OMP_NUM_THREADS=1): with quantized
    activations a different summation order can flip a rounding and change far more than the
    last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_torchrun(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(torchrun(folder, *args), cwd=folder, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env=env)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """One epoch of the FIXED a6.0_w0.4 experiment on two processes."""
    root = tmp_path_factory.mktemp("ddp")
    data = pair_folder(root / "data", n_train=N_TRAIN, n_val=N_VAL, size=32)
    folder = make_experiment(root, "em", "a6.0_w0.4")
    result = run_torchrun(folder, *tiny(data, "-o", "num_epochs=1"))
    assert result.returncode == 0, result.stdout + result.stderr
    return folder, data, result


def test_the_run_folder_is_written_once_by_rank_0(ddp_run) -> None:
    folder, _, result = ddp_run
    run = folder / "runs" / "exp"
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "command.txt", "config.yaml", "last.pt", "metrics.csv",
                                                     "overlays", "summary.json", "train.log"]
    assert (run / "command.txt").read_text().count("operation_mode normal") == 1  # one block: rank 0 wrote it once
    log = (run / "train.log").read_text()
    assert log.count("epoch 1/1") == 1 and log.count("operation_mode normal") == 1, log
    assert "rank 0 of 2 (backend gloo)" in log
    assert result.stdout.count("epoch 1/1") == 1  # the other rank prints nothing
    assert len(read_metrics(run / "metrics.csv")) == 1
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2


def test_one_ddp_step_equals_the_averaged_gradients_of_the_two_half_batches(ddp_run, one_thread) -> None:
    folder, data, _ = ddp_run
    recipe = load_recipe(folder / "em_unet.py")
    overrides = [t for t in tiny(data, "-o", "num_epochs=1") if t != "-o"]
    cfg = load_config(recipe.base_config, folder / "config.yaml", "UNET", overrides)
    seed_everything(cfg.seed)
    start = build_model(cfg)  # the initial weights every rank builds
    train_set, val_set = recipe.build_train(cfg), recipe.build_val(cfg)
    loss_fn = get_loss(cfg.loss)

    replicas, grads = [], []
    for rank in range(2):
        sampler = torch.utils.data.DistributedSampler(train_set, 2, rank, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(1)
        indices = list(sampler)[: BATCH // 2]
        images = torch.stack([train_set[i][0] for i in indices])
        masks = torch.stack([train_set[i][1] for i in indices])
        replica = copy.deepcopy(start).train()  # its own BatchNorm statistics, as each rank's
        loss_fn(replica(images), masks).backward()
        grads.append({n: p.grad.clone() for n, p in replica.named_parameters()})
        replicas.append(replica)
    mean_grad = {n: (grads[0][n] + grads[1][n]) / 2 for n in grads[0]}
    stepped = replicas[0]  # rank 0: its BatchNorm statistics, the averaged gradient, one Adam step
    optimizer = torch.optim.Adam(stepped.parameters(), lr=cfg.lr)
    for n, p in stepped.named_parameters():
        p.grad = mean_grad[n].clone()
    optimizer.step()
    set_validation_mode(stepped, batchnorm_train=True)  # rank 0 validates batches 0 and 2
    with torch.no_grad():
        for batch in validation_batches(N_VAL, VAL_BATCH, distributed.World(0, 2, 0)):
            stepped(torch.stack([val_set[i][0] for i in batch]))

    state = torch.load(folder / "runs" / "exp" / "last.pt", weights_only=True)
    saved = {**state["model"], **state["training_batchnorm"]}  # the moving averages training goes on with
    assert state["batchnorm_statistics"]["method"] == "recalibrated"
    for name, value in stepped.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(saved[name], value, rtol=1e-4, atol=1e-5, msg=name)
    exp_avg = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    for first_moment, (name, _) in zip(exp_avg, stepped.named_parameters(), strict=True):
        torch.testing.assert_close(first_moment, 0.1 * mean_grad[name], rtol=1e-3, atol=1e-7, msg=name)
    assert not torch.allclose(grads[0]["head.weight"], grads[1]["head.weight"])  # the halves differ


def test_gathered_validation_metrics_equal_a_single_process_inference(ddp_run, monkeypatch, one_thread) -> None:
    folder, data, _ = ddp_run
    logged = read_metrics(folder / "runs" / "exp" / "metrics.csv")[0]
    checkpoint = folder / "runs" / "exp" / "last.pt"
    code = train_in_process(monkeypatch, folder, *tiny(data, "-o", "num_epochs=1", "-o", "operation_mode=inference",
                                                       "-o", f"trained_model={checkpoint}"))
    assert code == 0
    (metrics,) = (folder / "runs" / "exp" / "inference").glob("last_t*_bn-*/metrics.json")
    single = json.loads(metrics.read_text())
    assert single["n_slices"] == N_VAL
    for key in ("val_loss", "dice", "dice_std", "rand_error", "pixel_error"):
        assert float(logged[key]) == pytest.approx(single[key], rel=1e-5, abs=1e-6), key


def test_an_interrupted_ddp_run_resumes(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=32, n_val=2, size=32)
    folder = make_experiment(tmp_path, "em", "full_precision")
    args = tiny(data, "-o", "num_epochs=6", "-o", "batch_size=4")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    for attempt in range(4):  # on a loaded machine the signal may land after the last epoch: try again
        name = f"killed{attempt}"
        process = subprocess.Popen(torchrun(folder, *args, "-o", f"experiment_name={name}"), cwd=folder, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run = folder / "runs" / name
        deadline = time.monotonic() + HANG_GUARD_S
        while not ((run / "metrics.csv").exists() and read_metrics(run / "metrics.csv")):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)  # to the launcher, which passes it on to both ranks
        stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
        if not (run / "summary.json").exists():
            break
    assert "interrupted during epoch" in stdout, stdout + stderr
    done = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert 1 <= done < 6
    before = read_metrics(run / "metrics.csv")

    result = run_torchrun(folder, *args, "-o", f"experiment_name={name}", "-o", "operation_mode=resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming after epoch {done} of 6" in result.stdout
    after = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in after] == [str(e) for e in range(1, 7)]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in before[:done]]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in after[:done]] == strip
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 6 and (run / "summary.json").exists()


# --- checks before any process group ------------------------------------------------------


def test_validation_batches_split_whole_batches_without_repeats() -> None:
    single = validation_batches(7, 2)
    assert single == [[0, 1], [2, 3], [4, 5], [6]]
    for size in (2, 3, 5):
        parts = [validation_batches(7, 2, distributed.World(r, size, r)) for r in range(size)]
        assert sorted(b for part in parts for b in part) == single
        assert all(part == single[r::size] for r, part in enumerate(parts))


@pytest.mark.parametrize(("overrides", "world_size", "fragments"), [
    (["-o", "batch_size=5"], "2", ("batch_size 5", "2 processes", "WORLD_SIZE")),
    (["-o", "sync_batchnorm=true"], None, ("sync_batchnorm", "CUDA")),
    (["-o", "precision=16-mixed"], None, ("16-mixed", "CUDA", "bf16")),
], ids=["batch-does-not-split", "sync-batchnorm-on-cpu", "16-mixed-on-cpu"])
def test_settings_the_world_cannot_run_are_refused(tmp_path, monkeypatch, capsys, overrides, world_size,
                                                   fragments) -> None:
    if torch.cuda.is_available() and world_size is None:
        pytest.skip("these settings are valid on CUDA")
    data = pair_folder(tmp_path / "data", n_train=2, n_val=1)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    if world_size:
        monkeypatch.setenv("WORLD_SIZE", world_size)
        monkeypatch.setenv("RANK", "0")
    code = train_in_process(monkeypatch, folder, "-o", f"dataset_path={data}", *overrides)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert all(f in err[0] for f in fragments), err[0]
    assert not (folder / "runs").exists()


def test_a_rank_other_than_0_prints_no_error(tmp_path, monkeypatch, capsys) -> None:
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert train_in_process(monkeypatch, folder, "-o", "batch_size=5") == 2
    assert capsys.readouterr().err == ""
