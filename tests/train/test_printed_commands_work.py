"""Every hint the trainers print is a command that works when pasted (issue 17 item 2): the
resume command after an interrupt, the refusal of an existing run folder (resume only for an
unfinished run), and the command that prepares missing data. Each test runs what was printed;
the resume command of an interrupted run as a real shell command from another directory."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from unet.invocation import Invocation, prepare_hint
from unet.train import Run

from ..conftest import REPO
from ..helpers.experiments import TINY, make_experiment, prepare_synthetic_em, run_printed, trainer_in_process


@pytest.fixture(scope="module")
def em_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_synthetic_em(tmp_path_factory.mktemp("hints") / "em")


def interrupt_at(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make the next training run stop with Ctrl-C at the start of ``epoch``."""
    original = Run._epoch

    def epoch_or_interrupt(self, number, loader, loss_fn):
        if number == epoch:
            raise KeyboardInterrupt
        return original(self, number, loader, loss_fn)

    monkeypatch.setattr(Run, "_epoch", epoch_or_interrupt)


def hint_after(marker: str, text: str) -> str:
    """The command printed after ``marker`` up to the end of its line (or the next ``;``)."""
    match = re.search(re.escape(marker) + r" (.+?)(?:; |$)", text, re.MULTILINE)
    assert match, f"no '{marker}' in:\n{text}"
    return match[1]


def shell_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def test_interrupt_hint_resumes_the_same_run_with_every_override(
        tmp_path: Path, em_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    folder = make_experiment(tmp_path)
    args = ["-f", "config.yaml", "-t", "UNET", *TINY, "-o", f"dataset_path={em_data}", "-o", "num_epochs=2",
            "-o", "experiment_name=custom", "-o", "overlay_every=5"]
    with monkeypatch.context() as patch:
        interrupt_at(patch, 2)
        assert trainer_in_process(patch, folder, args) == 130
    out = capsys.readouterr().out
    hint = hint_after("Continue with:", out)
    assert "<" not in hint and "experiment_name=custom" in hint and "num_epochs=2" in hint
    assert hint.startswith(f"cd {shlex.quote(str(folder))} && ") and hint.endswith("-o operation_mode=resume")

    run_dir = folder / "runs" / "custom"
    command_txt = (run_dir / "command.txt").read_text()
    assert f"cwd: {folder}" in command_txt
    assert "argv: " + json.dumps(["em_unet.py", *args]) in command_txt
    assert "command: cd " in command_txt

    # Starting the same run again is refused with the same resume command (read from command.txt).
    with monkeypatch.context() as patch:
        assert trainer_in_process(patch, folder, args) == 2
    err = capsys.readouterr().err
    assert "unfinished run (1 of 2 epochs logged)" in err
    assert hint_after("continue it with:", err) == hint

    # Pasted into a shell somewhere else, it finishes the interrupted run in place.
    result = subprocess.run(hint, shell=True, cwd=tmp_path, capture_output=True, text=True, env=shell_env(),
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch 1 of 2" in result.stdout
    assert json.loads((run_dir / "summary.json").read_text())["num_epochs"] == 2
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["custom"]
    assert (run_dir / "command.txt").read_text().count("operation_mode resume") == 1


def test_finished_run_refusal_offers_new_run_and_inference_not_resume(
        tmp_path: Path, em_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    folder = make_experiment(tmp_path)
    args = ["-f", "config.yaml", "-t", "UNET", *TINY, "-o", f"dataset_path={em_data}", "-o", "num_epochs=1",
            "-o", "overlay_every=5"]
    with monkeypatch.context() as patch:
        assert trainer_in_process(patch, folder, args) == 0
        assert trainer_in_process(patch, folder, args) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "resume" not in err
    evaluate = hint_after("to evaluate its best.pt run:", err)
    again = hint_after("to train again beside it (in exp-2) run:", err)
    assert again.endswith("--new-run")

    with monkeypatch.context() as patch:
        assert run_printed(patch, evaluate) == 0
    assert (folder / "runs" / "exp" / "inference" / "best_t0.999_bn-train" / "metrics.json").is_file()

    # The --new-run command, interrupted: its hint names the numbered folder, and resumes it.
    with monkeypatch.context() as patch:
        interrupt_at(patch, 1)
        assert run_printed(patch, again) == 130
    hint = hint_after("Continue with:", capsys.readouterr().out)
    assert "experiment_name=exp-2" in hint and "--new-run" not in hint
    with monkeypatch.context() as patch:
        assert run_printed(patch, hint) == 0
    assert (folder / "runs" / "exp-2" / "summary.json").is_file()
    assert not (folder / "runs" / "exp-3").exists()


def test_resume_of_a_finished_run_points_to_inference(
        tmp_path: Path, em_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    folder = make_experiment(tmp_path)
    args = ["-f", "config.yaml", "-t", "UNET", *TINY, "-o", f"dataset_path={em_data}", "-o", "num_epochs=1"]
    with monkeypatch.context() as patch:
        assert trainer_in_process(patch, folder, args) == 0
        assert trainer_in_process(patch, folder, [*args, "-o", "operation_mode=resume"]) == 2
    err = capsys.readouterr().err
    assert "nothing to resume" in err
    with monkeypatch.context() as patch:
        assert run_printed(patch, hint_after("to evaluate its best.pt run:", err)) == 0


def test_prepare_hint_works_from_the_experiment_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    folder = make_experiment(tmp_path)
    missing = tmp_path / "prepared"
    with monkeypatch.context() as patch:
        status = trainer_in_process(patch, folder, ["-f", "config.yaml", *TINY, "-o", f"dataset_path={missing}"])
    assert status == 2
    err = capsys.readouterr().err
    command = re.search(r"prepare it with: (.+?) \(or ", err)[1]
    assert "--out" in command
    fast = " --synthetic-slices 8 --synthetic-size 128 --resize 64 --crop 48"
    result = subprocess.run(command + fast, shell=True, cwd=folder, capture_output=True, text=True,
                            env=shell_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(list((missing / "train" / "images").glob("*.png"))) == 6


def test_prepare_hint_is_relative_to_where_the_user_is() -> None:
    quickstart = REPO / "em" / "quickstart"
    text = prepare_hint("python preprocessing/em_prepare.py --synthetic (or --volume v.tif)", REPO,
                        REPO / "data" / "em", REPO / "data" / "em", cwd=quickstart)
    script = shlex.split(text.split(" (or")[0])[1]
    assert script == "../../preprocessing/em_prepare.py" and (quickstart / script).is_file()
    assert "--out" not in text  # the default output is where the config looks
    from_root = prepare_hint("python preprocessing/em_prepare.py --synthetic", REPO, REPO / "elsewhere",
                             REPO / "data" / "em", cwd=REPO)
    assert shlex.split(from_root)[1:] == ["preprocessing/em_prepare.py", "--synthetic", "--out", "elsewhere"]


def test_command_needs_cd_only_for_relative_paths() -> None:
    absolute = Invocation(cwd="/some where", python=sys.executable, script="/r/em_unet.py", config="/r/c.yaml",
                          top_key="UNET", overrides=("num_epochs=3", "dataset_path=/data/em"))
    assert not absolute.needs_cwd()
    assert absolute.shell() == shlex.join([sys.executable, "/r/em_unet.py", "-f", "/r/c.yaml", "-t", "UNET",
                                           "-o", "num_epochs=3", "-o", "dataset_path=/data/em"])
    relative_override = Invocation(cwd="/some where", python="python", script="/r/em_unet.py", config="/r/c.yaml",
                                   top_key="UNET", overrides=("log_output_dir=runs_cpu",))
    assert relative_override.shell().startswith("cd '/some where' && python ")
    resumed = relative_override.with_mode("resume", "exp-2", drop_flags=("--new-run",))
    assert resumed.overrides == ("log_output_dir=runs_cpu", "experiment_name=exp-2", "operation_mode=resume")
