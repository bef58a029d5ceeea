"""Loading a checkpoint never runs code (issue 12, item 1), through every mode that loads one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unet.checkpoint import UnsafeCheckpointError, load_checkpoint
from unet.errors import DataError

from ..helpers.experiments import assert_one_line_error, em_args, make_experiment, pair_folder, train


class _WritesMarker:
    """Unpickling this object creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A .pt that looks like one of ours but runs code when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 1, "model": {}, "epoch": 1, "payload": _WritesMarker(marker)}, path)
    return path


def tiny(data: Path, *extra: str) -> list[str]:
    return em_args(data, "-o", "base_channels=4", *extra)


def test_load_checkpoint_refuses_code_and_runs_it_only_when_allowed(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    path = crafted_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert str(path) in message and "could run code" in message and "allow_unsafe_checkpoint" in message
    assert "builtins.exec" in message
    assert not marker.exists()
    # the payload is real: the explicit opt-in loads it (and so runs it), after a warning naming the file
    load_checkpoint(path, allow_unsafe=True)
    assert marker.read_text() == "code ran"
    assert f"warning: loading {path}" in capsys.readouterr().err


def test_old_checkpoint_with_pickled_rng_needs_the_opt_in(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"model": {"w": torch.ones(2)}, "rng": {"numpy": np.random.get_state()}}, path)  # noqa: NPY002
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_checkpoint(path)
    state = load_checkpoint(path, allow_unsafe=True)
    assert torch.equal(state["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("content", [b"", b"\x80\x04not a pickle", bytes(range(256))])
def test_damaged_file_is_a_data_error_even_with_the_opt_in(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    for allow in (False, True):
        with pytest.raises(DataError, match="cannot be read") as error:
            load_checkpoint(path, allow_unsafe=allow)
        assert not isinstance(error.value, UnsafeCheckpointError)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inference", "visualize", "retrain", "resume"])
def test_every_mode_refuses_a_crafted_checkpoint(tmp_path: Path, mode: str) -> None:
    data = pair_folder(tmp_path / "data", n_train=2, n_val=1)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    marker = tmp_path / "marker"
    if mode == "resume":  # a crafted last.pt in the run folder
        evil = crafted_checkpoint(folder / "runs" / "exp" / "last.pt", marker)
        args = tiny(data, "-o", "operation_mode=resume")
    else:
        evil = crafted_checkpoint(tmp_path / "shared" / "best.pt", marker)
        args = tiny(data, "-o", f"operation_mode={mode}", "-o", f"trained_model={evil}")
    result = train(folder, *args)
    assert_one_line_error(result, str(evil), "could run code", "allow_unsafe_checkpoint")
    assert not marker.exists()
    assert not (folder / "runs" / "exp" / "metrics.csv").exists()


@pytest.mark.slow
def test_checkpoints_we_write_load_safely_and_old_ones_load_with_the_opt_in(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=2, n_val=1)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    assert train(folder, *tiny(data)).returncode == 0
    run = folder / "runs" / "exp"
    for name in ("last.pt", "best.pt"):
        assert "model" in torch.load(run / name, weights_only=True)
    # the same best.pt as an older version wrote it (RNG states as pickled numpy arrays)
    state = torch.load(run / "best.pt", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({**state, "rng": {"numpy": np.random.get_state()}}, old)  # noqa: NPY002
    args = tiny(data, "-o", "operation_mode=inference", "-o", f"trained_model={old}")
    assert_one_line_error(train(folder, *args), str(old), "allow_unsafe_checkpoint")
    result = train(folder, *args, "-o", "allow_unsafe_checkpoint=true")
    assert result.returncode == 0, result.stderr
    assert f"warning: loading {old}" in result.stderr and "inference: dice" in result.stdout


# --- normal mode never replaces a trained_model file that another run wrote (issue 12, item 2) -------------


@pytest.mark.slow
def test_trained_model_of_someone_else_is_refused_unless_overwrite_is_asked(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=2, n_val=1)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    target = tmp_path / "models" / "mine.pt"
    target.parent.mkdir()
    target.write_bytes(b"a colleague's model")
    args = tiny(data, "-o", f"trained_model={target}")
    result = train(folder, *args)
    assert_one_line_error(result, str(target), "not written by this run", "--overwrite-trained-model")
    assert target.read_bytes() == b"a colleague's model"
    assert not (folder / "runs").exists()  # refused before training started
    result = train(folder, *args, "--overwrite-trained-model")
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == (folder / "runs" / "exp" / "best.pt").read_bytes()
    # the next normal run (another folder, another run id) must not replace the first run's model
    result = train(folder, *args, "--new-run")
    assert_one_line_error(result, str(target), "--overwrite-trained-model")
    assert target.read_bytes() == (folder / "runs" / "exp" / "best.pt").read_bytes()


@pytest.mark.slow
def test_resumed_run_keeps_copying_its_best_model(tmp_path: Path) -> None:
    data = pair_folder(tmp_path / "data", n_train=2, n_val=1)
    folder = make_experiment(tmp_path, "em", "a6.0_w0.4")
    target = tmp_path / "model.pt"
    args = tiny(data, "-o", f"trained_model={target}", "-o", "num_epochs=2")
    assert train(folder, *args).returncode == 0
    run = folder / "runs" / "exp"
    run_id = torch.load(run / "last.pt", weights_only=True)["run_id"]
    assert len(run_id) == 32 and torch.load(target, weights_only=True)["run_id"] == run_id
    # make the run look interrupted after epoch 1, with epoch 2 sure to be a new best
    last = torch.load(run / "last.pt", weights_only=True)
    torch.save({**last, "epoch": 1, "history": last["history"][:1], "best": {"dice": -1.0, "epoch": 0}},
               run / "last.pt")
    (run / "summary.json").unlink()
    copy = torch.load(target, weights_only=True)
    torch.save({**copy, "epoch": -1}, target)  # this run's file, marked to see it replaced
    result = train(folder, *args, "-o", "operation_mode=resume")
    assert result.returncode == 0, result.stderr
    resumed = torch.load(target, weights_only=True)
    assert resumed["epoch"] == 2 and resumed["run_id"] == run_id
    assert target.read_bytes() == (run / "best.pt").read_bytes()
