"""Preparation never deletes a user's files: the three preparation commands through their real
command line, and the in-place replacement of :func:`unet.fileio.atomic_directory`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from unet.errors import DataError
from unet.fileio import PAIRS, SYNTHETIC_SOURCE, atomic_directory, check_output_dir
from unet.prep.em import prepare_em
from unet.prep.em import preparing as em_preparing

from ..conftest import REPO, run_command

# The smallest options each command has; a second set that changes what is written.
COMMANDS = {
    "em": (["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "4", "--synthetic-size", "32",
            "--resize", "0", "--crop", "16"], ["--augment-copies", "1"]),
    "gm": (["preprocessing/gm_prepare.py", "--synthetic", "--size", "40", "--slices", "3", "--subjects", "2",
            "--sites", "1"], ["--sites", "2"]),
    "nih": (["preprocessing/nih_prepare.py", "--synthetic", "--synthetic-cases", "3", "--synthetic-shape", "40",
             "40", "10", "--no-progress"], ["--val-cases", "1"]),
}
# What the second run (the first run's options) must say is already there.
ALREADY = {
    "em": ("already holds a prepared data set", "3 train / 1 val pairs", "data-synthetic-source"),
    "gm": ("already holds a synthetic GM release", "sites 1, 2 subjects each"),
    "nih": ("already holds a prepared data set", " train / ", " val pairs", "data-synthetic-source"),
}


def prepare(dataset: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_command([*COMMANDS[dataset][0], "--out", str(out), *extra], cwd=REPO)


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(COMMANDS))
def test_a_folder_no_preparation_wrote_is_refused_and_kept(tmp_path: Path, dataset: str) -> None:
    out = tmp_path / "data"
    (out / "photos").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes\n")
    (out / "photos" / "cat.png").write_bytes(b"not really a png")
    line = error_line(prepare(dataset, out, "--overwrite"))  # --overwrite does not cover a stranger's folder
    for fragment in (str(out), "is not empty", "2 entries (notes.txt, photos/)", "choose another --out or empty it"):
        assert fragment in line, line
    assert snapshot(out) == {"notes.txt": b"my notes\n", "photos/cat.png": b"not really a png"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no synthetic source, no temporary folder


@pytest.mark.slow
@pytest.mark.parametrize("dataset", sorted(COMMANDS))
def test_a_second_preparation_needs_overwrite_which_keeps_other_files(tmp_path: Path, dataset: str) -> None:
    out = tmp_path / "data"
    first = prepare(dataset, out)
    assert first.returncode == 0, first.stderr
    before = snapshot(out)

    line = error_line(prepare(dataset, out))
    for fragment in (str(out), *ALREADY[dataset], "pass --overwrite"):
        assert fragment in line, line
    assert snapshot(out) == before

    (out / "notes.txt").write_text("keep me\n")
    (out / "nested").mkdir()
    (out / "nested" / "model.pt").write_bytes(b"weights")
    second = prepare(dataset, out, "--overwrite", *COMMANDS[dataset][1])
    assert second.returncode == 0, second.stderr
    after = snapshot(out)
    assert after.pop("notes.txt") == b"keep me\n" and after.pop("nested/model.pt") == b"weights"
    assert after != before  # the data were replaced ...
    if dataset == "gm":  # ... site 1's files are gone, site 2's are there
        assert any(name.startswith("site2-") for name in after)
        assert not any(name.startswith("site1-") for name in after)
        assert json.loads(after["synthetic_release.json"])["sites"] == [2]
    else:  # ... the old pairs are gone, the new ones there
        manifest = json.loads(after["prepare.json"])
        val = {name.split("/")[-1] for name in after if name.startswith("val/images/")}
        if dataset == "em":
            assert manifest["augment_copies"] == 1 and manifest["pairs"] == {"train": 6, "val": 1}
            assert len([n for n in after if n.startswith("train/masks/")]) == 6 and val == {"slice_03.png"}
        else:
            assert manifest["cases"]["val"] == [1] and val and all(n.startswith("case0001_") for n in val)
            assert not any(n.startswith("val/images/case0001_") for n in before)  # it was not val before
    assert not list(out.rglob(".*"))  # no partial marker left
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder

# --- atomic_directory in place, in-process -----------------------------------------------------


def small_stack() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((4, 24, 24)) > 0.3, 255, 0).astype(np.uint8)
    return rng.integers(0, 255, (4, 24, 24), dtype=np.uint8), labels


def test_interrupted_replacement_looks_unfinished_and_can_be_redone(tmp_path: Path, monkeypatch) -> None:
    volume, labels = small_stack()
    out = tmp_path / "em"
    prepare_em(volume, labels, out, None, resize=None, crop=16)
    (out / "notes.txt").write_text("keep me\n")
    real = os.replace
    calls = {"n": 0}

    def failing(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:  # after the old files are gone, while the new ones move in
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_em(volume, labels, out, None, resize=None, crop=16, augment_copies=1, overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    assert not (out / "prepare.json").exists()  # does not look finished
    assert (out / PAIRS.partial_marker).is_file() and (out / "notes.txt").read_text() == "keep me\n"
    assert [p.name for p in tmp_path.iterdir()] == ["em"]  # the temporary folder is gone

    with pytest.raises(DataError, match="from an interrupted preparation.*pass --overwrite"):
        prepare_em(volume, labels, out, None, resize=None, crop=16)
    info = prepare_em(volume, labels, out, None, resize=None, crop=16, augment_copies=1, overwrite=True)
    assert info["pairs"] == {"train": 6, "val": 1}
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "prepare.json", "train", "val"]
    assert len(list((out / "train" / "masks").iterdir())) == 6


def test_replacement_never_writes_through_a_users_link(tmp_path: Path) -> None:
    volume, labels = small_stack()
    out = tmp_path / "em"
    prepare_em(volume, labels, out, None, resize=None, crop=16)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "slice_00.png").write_bytes(b"precious")
    for png in (out / "val" / "images").iterdir():
        png.unlink()
    (out / "val" / "images").rmdir()
    (out / "val" / "images").symlink_to(mine, target_is_directory=True)
    before = snapshot(out)
    with pytest.raises(DataError, match="val/images is in the way"):
        prepare_em(volume, labels, out, None, resize=None, crop=16, overwrite=True)
    assert snapshot(out) == before and (out / "prepare.json").is_file()
    assert (mine / "slice_00.png").read_bytes() == b"precious"


def test_a_stray_output_file_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside its layout"), atomic_directory(tmp_path / "out") as tmp:
        (tmp / "train" / "images").mkdir(parents=True)
        (tmp / "train" / "images" / "a.jpg").write_bytes(b"x")
    assert list(tmp_path.iterdir()) == []


def test_unmarked_synthetic_source_of_an_older_version_is_adopted(tmp_path: Path) -> None:
    source = tmp_path / "em-synthetic-source"
    source.mkdir()
    (source / "train-volume.tif").write_bytes(b"old")
    with pytest.raises(DataError, match="synthetic source data .1 file, no synthetic_source.json.*--overwrite"):
        check_output_dir(source, SYNTHETIC_SOURCE)
    check_output_dir(source, SYNTHETIC_SOURCE, overwrite=True)
    (source / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="no preparation wrote it"):
        check_output_dir(source, SYNTHETIC_SOURCE, overwrite=True)
    with pytest.raises(DataError, match="is not a folder"):
        check_output_dir(source / "notes.txt")


def test_interrupted_fresh_preparation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    volume, labels = small_stack()
    monkeypatch.setattr(em_preparing, "write_manifest", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare_em(volume, labels, tmp_path / "em", None, resize=None, crop=16)
    assert list(tmp_path.iterdir()) == []
