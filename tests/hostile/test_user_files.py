"""Class 1 of issue 23: a user's files are never overwritten or destroyed without asking, and an
output never replaces the command's own input, with or without ``--overwrite``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unet.export.__main__ import main as export_main
from unet.predict.cli import main as predict_main
from unet.results.cli import main as results_main

from ..conftest import REPO
from ..helpers.experiments import make_experiment
from .helpers import digest, error_line, png, run_module, script_main, tiny_state, write_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("model") / "run" / "best.pt", tiny_state("EM"))


def predict(checkpoint: Path, inputs: Path, out: Path, *extra: str) -> int:
    return predict_main(["-m", str(checkpoint), "-i", str(inputs), "-o", str(out), "--prepared", "--device", "cpu",
                         "--no-progress", *extra])


# --- predict.json ------------------------------------------------------------------------------


def test_predict_refuses_to_replace_a_users_predict_json(checkpoint, tmp_path: Path, capsys) -> None:
    png(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predict.json").write_text("my own notes, not JSON\n")
    before = digest(tmp_path)
    for extra in ([], ["--continue"]):
        status = predict(checkpoint, tmp_path / "in", tmp_path / "out", *extra)
        error_line(status, capsys.readouterr().err, str(tmp_path / "out" / "predict.json"), "not written by predict",
                   "--overwrite")
    assert digest(tmp_path) == before
    assert predict(checkpoint, tmp_path / "in", tmp_path / "out", "--overwrite") == 0  # asked for
    assert json.loads((tmp_path / "out" / "predict.json").read_text())["files"][0]["ok"]


def test_later_runs_add_to_the_record_of_earlier_outputs(checkpoint, tmp_path: Path, capsys) -> None:
    png(tmp_path / "in" / "a.png")
    assert predict(checkpoint, tmp_path / "in", tmp_path / "out") == 0
    png(tmp_path / "in" / "b.png", seed=1)
    assert predict(checkpoint, tmp_path / "in", tmp_path / "out", "--continue") == 0, capsys.readouterr().err
    files = json.loads((tmp_path / "out" / "predict.json").read_text())["files"]
    assert sorted(Path(entry["input"]).name for entry in files) == ["a.png", "b.png"]
    assert all(entry["ok"] for entry in files)
    png(tmp_path / "other" / "c.png", seed=2)  # another input folder into the same OUTPUT_DIR
    assert predict(checkpoint, tmp_path / "other", tmp_path / "out") == 0, capsys.readouterr().err
    files = json.loads((tmp_path / "out" / "predict.json").read_text())["files"]
    assert sorted(Path(entry["input"]).name for entry in files) == ["a.png", "b.png", "c.png"]


# --- export ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["same_path", "other_spelling", "symlink", "run_folder_source", "onnx",
                                 "sidecar_is_checkpoint"])
def test_export_never_replaces_its_own_input(checkpoint, tmp_path: Path, capsys, how: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    best = run / "best.pt"
    source, out, extra = str(best), best, []
    if how == "other_spelling":
        out = run / ".." / "run" / "." / "best.pt"
    elif how == "symlink":
        (tmp_path / "link.pt").symlink_to(best)
        out = tmp_path / "link.pt"
    elif how == "run_folder_source":
        source = str(run)
    elif how == "onnx":
        extra = ["--format", "onnx"]
    elif how == "sidecar_is_checkpoint":
        out = run / "best"  # its record would be run/best.json
        best.rename(run / "best.json")
        source = str(run / "best.json")
    before = digest(tmp_path)
    status = export_main([source, "-o", str(out), "--overwrite", *extra])
    error_line(status, capsys.readouterr().err, "never replaces its input")
    assert digest(tmp_path) == before


def test_export_keeps_a_users_file_named_like_its_record(checkpoint, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.uqp"
    (tmp_path / "model.uqp.json").write_text('{"mine": true}\n')
    before = digest(tmp_path)
    for extra in ([], ["--overwrite"]):
        status = export_main([str(checkpoint), "-o", str(out), *extra])
        error_line(status, capsys.readouterr().err, "model.uqp.json", "not written by an export")
    assert digest(tmp_path) == before
    # an export's own record is replaced with --overwrite only
    (tmp_path / "model.uqp.json").unlink()
    assert export_main([str(checkpoint), "-o", str(out)]) == 0
    assert json.loads((tmp_path / "model.uqp.json").read_text())["format"] == "packed"
    error_line(export_main([str(checkpoint), "-o", str(out)]), capsys.readouterr().err, "--overwrite")
    assert export_main([str(checkpoint), "-o", str(out), "--overwrite"]) == 0


# --- results -----------------------------------------------------------------------------------


def test_results_keeps_a_users_results_md(tmp_path: Path, capsys) -> None:
    experiments = tmp_path / "em"
    make_experiment(experiments, name="a6.0_w0.4")
    out = tmp_path / "report"
    out.mkdir()
    (out / "results.md").write_text("# my thesis chapter\n")
    before = digest(tmp_path)
    args = [str(experiments), "--out", str(out), "--no-overlays", "--no-weights"]
    error_line(results_main(args), capsys.readouterr().err, str(out / "results.md"), "--overwrite")
    assert digest(tmp_path) == before
    assert results_main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    assert (out / "results.md").read_text().startswith("# Results")
    assert results_main(args) == 0  # its own results are refreshed


# --- preparation -------------------------------------------------------------------------------

EM_PREPARE = ["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "4", "--synthetic-size", "32",
              "--resize", "0", "--crop", "16"]


def test_prepare_overwrite_removes_only_what_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "data"
    prepare = script_main(EM_PREPARE[0])
    assert prepare([*EM_PREPARE[1:], "--out", str(out)]) == 0
    listed = json.loads((out / "prepare.json").read_text())["files"]
    assert "train/images/slice_00.png" in listed and "prepare.json" not in listed
    (out / "train" / "images" / "my_extra.png").write_bytes(b"the user's own slice")
    assert prepare([*EM_PREPARE[1:], "--out", str(out), "--overwrite"]) == 0
    assert (out / "train" / "images" / "my_extra.png").read_bytes() == b"the user's own slice"


def test_synthetic_overwrite_keeps_the_users_stacks_in_the_source_sibling(tmp_path: Path) -> None:
    source = tmp_path / "data-synthetic-source"
    source.mkdir()
    (source / "train-volume.tif").write_bytes(b"my real volume")
    (source / "train-labels.tif").write_bytes(b"my real labels")
    before = digest(tmp_path)
    result = run_module([*EM_PREPARE, "--out", str(tmp_path / "data"), "--overwrite"], cwd=REPO)
    error_line(result.returncode, result.stderr, "train-", "not written by one")
    assert digest(tmp_path) == before
