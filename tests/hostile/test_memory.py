"""Class 3 of issue 23: memory a file does not justify. NIfTI headers that declare more voxels than
the file holds (or than the machine has), and a YAML alias bomb echoed in an error message, are
refused with one line before anything large is allocated: every case runs under an address-space
limit (``RLIMIT_AS``) of the process's current size plus 1.5 GiB."""

from __future__ import annotations

import contextlib
import gzip
import resource
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet.predict.cli import main as predict_main

from ..helpers.experiments import make_experiment, trainer_in_process
from .helpers import digest, error_line, script_main, tiny_state, write_checkpoint

HEADROOM = 3 * 2**29  # 1.5 GiB


@contextlib.contextmanager
def address_space_limit(headroom: int = HEADROOM) -> Iterator[None]:
    """Lower this process's soft RLIMIT_AS to its current size + ``headroom`` for the block."""
    with open("/proc/self/status") as handle:
        size_kb = int(next(line for line in handle if line.startswith("VmSize:")).split()[1])
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size_kb * 1024 + headroom, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def raw_nifti(path: Path, shape: tuple[int, ...], data: bytes = b"", version: int = 1) -> Path:
    """A NIfTI file whose header declares ``shape`` float32 voxels followed by ``data`` only
    (gzip-compressed for ``.nii.gz``), as a crafted or truncated file would be."""
    header = (nib.Nifti1Header if version == 1 else nib.Nifti2Header)()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_sform(np.eye(4), code=1)
    header.set_qform(np.eye(4), code=1)
    offset = int(header.get_data_offset())
    block = header.binaryblock
    raw = block + b"\0" * (offset - len(block)) + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


CASES = {  # name: (file name, shape, NIfTI version, words the error line must hold)
    "gz_declares_2GB": ("bomb.nii.gz", (1000, 1000, 500), 1, "truncated"),
    "gz_declares_18GB": ("bomb.nii.gz", (3000, 3000, 500), 1, "3000x3000x500"),
    "nifti2_declares_40TB": ("huge.nii", (100000, 100000, 1000), 2, "100000x100000x1000"),
    "nii_truncated": ("short.nii", (600, 600, 600), 1, "truncated"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {name: write_checkpoint(root / f"{name}.pt", tiny_state(name)) for name in ("GM", "NIH")}


@pytest.mark.parametrize("dataset", ["GM", "NIH"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_predict_refuses_a_nifti_that_declares_more_than_it_holds(models, tmp_path: Path, capsys, dataset: str,
                                                                   case: str) -> None:
    name, shape, version, words = CASES[case]
    volume = raw_nifti(tmp_path / "in" / name, shape, b"\0" * 64, version)
    before = digest(tmp_path)
    with address_space_limit():
        status = predict_main(["-m", str(models[dataset]), "-i", str(volume), "-o", str(tmp_path / "out"),
                               "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    error_line(status, err, str(volume), words)
    assert digest(tmp_path) == {**before, "out/predict.json": digest(tmp_path)["out/predict.json"]}


def test_nih_preparation_refuses_the_bomb_before_allocating(tmp_path: Path, capsys) -> None:
    raw_nifti(tmp_path / "images" / "PANCREAS_0001.nii.gz", (1000, 1000, 500), b"\0" * 64)
    raw_nifti(tmp_path / "labels" / "label0001.nii.gz", (1000, 1000, 500), b"\0" * 64)
    prepare = script_main("preprocessing/nih_prepare.py")
    with address_space_limit():
        status = prepare(["--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                          "--out", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and status == 2, captured
    assert "PANCREAS_0001.nii.gz" in captured.err and "truncated" in captured.err, captured.err
    assert not (tmp_path / "out").exists()


def test_a_yaml_alias_bomb_in_a_config_value_is_echoed_short(tmp_path: Path, capsys, monkeypatch) -> None:
    folder = make_experiment(tmp_path)
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in "bcdefghi":  # 10**9 strings when expanded
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [{', '.join(['*' + previous] * 10)}]")
    lines.append("UNET:\n  lr: *i")
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")
    with address_space_limit():
        status = trainer_in_process(monkeypatch, folder, ["-f", "config.yaml", "-t", "UNET"])
    line = error_line(status, capsys.readouterr().err, "'lr'", "must be a number")
    assert len(line) < 500
