"""The sweep on more than one device: ``--jobs N`` slots and Slurm jobs through submitit
(tested with submitit's local executor: real processes, no cluster)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unet.errors import UserError
from unet.launchers import (
    LaunchFailed,
    SlurmOptions,
    TrainerExit,
    job_command,
    local_slots,
    minutes,
    parse_sbatch,
    read_slurm_config,
)

from ..conftest import REPO, run_command
from ..helpers.experiments import make_experiment, pair_folder


def tiny(data: Path) -> list[str]:
    return ["-o", f"dataset_path={data}", "-o", "crop_size=[32,32]", "-o", "base_channels=2", "-o", "batch_size=2",
            "-o", "val_batch_size=2", "-o", "num_epochs=1"]


# --- slots and options ---------------------------------------------------------------------


def test_one_gpu_per_slot_and_never_more_slots_than_gpus() -> None:
    slots = local_slots(4, gpus=["3", "5"])
    assert [s.env for s in slots] == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}]
    assert all(s.overrides == ("gpu_core_num=0",) for s in slots)  # the one visible GPU is cuda:0
    assert len(local_slots(1, gpus=["0", "1"])) == 1


@pytest.mark.parametrize(("jobs", "cpus", "threads"), [(2, 2, "1"), (3, 8, "2"), (4, 2, "1"), (1, 16, "16")])
def test_cpu_slots_share_the_threads(jobs: int, cpus: int, threads: str) -> None:
    slots = local_slots(jobs, gpus=[], cpus=cpus)
    assert len(slots) == jobs
    assert all(s.env == {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} and not s.overrides for s in slots)


@pytest.mark.parametrize(("text", "expected"), [("90", 90), ("1:30:00", 90), ("2-00:00:00", 2880), ("45:30", 46),
                                                ("1-12", 2160), ("0:00:20", 1)])
def test_slurm_time_formats(text: str, expected: int) -> None:
    assert minutes(text) == expected


def test_bad_slurm_time_and_sbatch_are_refused() -> None:
    with pytest.raises(UserError, match="H:MM:SS"):
        minutes("two hours")
    with pytest.raises(UserError, match="key=value"):
        parse_sbatch(["account"])
    assert parse_sbatch(["--account=abc", "qos=high"]) == {"account": "abc", "qos": "high"}


def test_slurm_options_become_submitit_parameters(tmp_path: Path) -> None:
    options = SlurmOptions(partition="gpu", time="2:00:00", gpus_per_job=2, mem_gb=32, sbatch={"account": "x"})
    params = options.parameters()
    assert params["slurm_partition"] == "gpu" and params["timeout_min"] == 120 and params["gpus_per_node"] == 2
    assert params["mem_gb"] == 32 and params["slurm_additional_parameters"] == {"account": "x"}
    config = tmp_path / "slurm.yaml"
    config.write_text("partition: gpu\nsbatch: {account: x}\nmemory: 3\n")
    with pytest.raises(UserError, match="unknown key.*memory"):
        read_slurm_config(config)


def test_a_job_with_several_gpus_runs_the_trainer_under_torchrun() -> None:
    command = ["python", "em_unet.py", "-f", "config.yaml"]
    assert job_command(command, 1) == command
    assert job_command(command, 4) == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                                       "em_unet.py", "-f", "config.yaml"]


@pytest.mark.parametrize(("args", "fragment"), [
    (["--jobs", "0"], "--jobs 0"),
    (["--partition", "gpu"], "need --launcher slurm"),
    (["--launcher", "slurm", "--jobs", "2"], "--jobs is for the local launcher"),
    (["--launcher", "slurm", "--no-wait", "--results"], "--results needs finished runs"),
])
def test_sweep_option_mistakes_are_one_line_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    make_experiment(tmp_path / "em", name="a")
    result = run_command(["-m", "unet.sweep", str(tmp_path / "em"), *args], cwd=REPO)
    lines = [s for s in result.stderr.strip().splitlines() if s.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]


# --- the sweep's one loop, with a launcher that runs nothing --------------------------------


class FakeHandle:
    def __init__(self, result: TrainerExit | None) -> None:
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> TrainerExit:
        if self._result is None:
            raise LaunchFailed("job 7: DUE TO TIME LIMIT")
        return self._result


class FakeLauncher:
    """Writes what a trainer would leave in the run folder, prints nothing like an epoch line."""

    def __init__(self, detached: bool = False, capacity: int | None = 1) -> None:
        self.capacity, self.detached, self.announces = capacity, detached, True
        self.started: list[str] = []

    def start(self, label: str, command: list[str], cwd: Path) -> tuple[FakeHandle, str]:
        self.started.append(label)
        run_dir = cwd / "runs" / cwd.name
        if cwd.name == "lost":
            return FakeHandle(None), "job 7"
        if cwd.name == "broken":
            return FakeHandle(TrainerExit(2, ["something"], "error: key 'lr' must be > 0\n")), "job 8"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.csv").write_text("epoch,dice\n1,40.0\n2,61.5\n3,55.0\n")
        (run_dir / "summary.json").write_text('{"finished": true, "best_dice": 61.5, "best_epoch": 2}\n')
        return FakeHandle(TrainerExit(0, ["epoch 3/3 dice 99.99 (not what the sweep reports)"], "")), "slot"

    def close(self) -> None:
        pass


def test_the_sweep_reads_the_outcome_from_the_run_folder_whatever_the_launcher(tmp_path: Path) -> None:
    from unet.sweep import Status, sweep

    for name in ("good", "broken", "lost"):
        make_experiment(tmp_path / "em", name=name)
    launcher = FakeLauncher()
    outcomes = {o.experiment.name: o for o in sweep([tmp_path / "em"], launcher=launcher)}
    assert sorted(launcher.started) == ["em/broken", "em/good", "em/lost"]
    good = outcomes["good"]
    assert good.status == Status.FINISHED == "finished" and good.best_dice == 61.5 and good.epochs == 3
    assert outcomes["broken"].status == "failed" and outcomes["broken"].message == "exit 2: error: key 'lr' must be > 0"
    assert outcomes["lost"].status == "failed" and outcomes["lost"].message == "job 7: DUE TO TIME LIMIT"
    again = {o.experiment.name: o for o in sweep([tmp_path / "em"], only=["good"], launcher=FakeLauncher())}
    assert again["good"].status == Status.SKIPPED and again["good"].best_dice == 61.5


def test_a_detached_launcher_need_not_be_waited_for(tmp_path: Path) -> None:
    from unet.sweep import Status, sweep

    make_experiment(tmp_path / "em", name="good")
    (outcome,) = sweep([tmp_path / "em"], launcher=FakeLauncher(detached=True, capacity=None), wait_for_jobs=False)
    assert outcome.status == Status.SUBMITTED and outcome.message == "slot"


# --- real runs (slow) ----------------------------------------------------------------------


@pytest.mark.slow
def test_jobs_run_experiments_at_once_each_on_its_share_of_the_threads(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    root = tmp_path / "em"
    for name in ("first", "second"):
        make_experiment(root, name=name)
    result = run_command(["-m", "unet.sweep", str(root), "--jobs", "2", *tiny(data)], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    threads = local_slots(2, gpus=[])[0].env["OMP_NUM_THREADS"]
    for name in ("first", "second"):
        assert f"[em/{name}] started ({threads} CPU thread" in result.stdout
        assert re.search(rf"\[em/{name}\] finished in \S+, best Dice", result.stdout)
        log = (root / name / "runs" / name / "train.log").read_text()
        assert f"{threads} threads)" in log
        assert (root / name / "runs" / name / "summary.json").is_file()
    assert "epoch 1/1" not in result.stdout  # the trainers' own lines stay in their logs
    assert "sweep" in result.stderr  # the overall bar


@pytest.mark.slow
def test_slurm_path_with_submitit_local_executor_reports_a_failed_job_like_a_local_run(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    root = tmp_path / "em"
    make_experiment(root, name="good")
    bad = make_experiment(root, name="bad")
    bad.joinpath("config.yaml").write_text(bad.joinpath("config.yaml").read_text() + "  lr: -1\n")
    logs = tmp_path / "logs"
    result = run_command(["-m", "unet.sweep", str(root), "--launcher", "local-submitit", "--slurm-logs", str(logs),
                          "--time", "10", *tiny(data)], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"\[em/good\] submitted as job \d+", result.stdout)
    assert "[em/good] finished in" in result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("[em/bad] FAILED")]
    assert failed and "exit 2: error: " in failed[0] and "key 'lr' must be > 0" in failed[0], result.stdout
    assert (root / "good" / "runs" / "good" / "summary.json").is_file()
    assert any(logs.rglob("*_log.out"))  # submitit's job logs hold the trainer's output
    summary = result.stdout.split("experiment  status")[1]
    assert re.search(r"em/good\s+finished", summary) and re.search(r"em/bad\s+failed", summary)
