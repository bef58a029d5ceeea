"""Class 7 of issue 23: a kill during a write leaves a hidden ``.NAME.XXXXXXXX.tmp``; resume,
``predict --continue`` and a later export remove their own stale temporaries (only that pattern,
only for the files they write, only in the folders they hold the lock of) and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from unet.export.__main__ import main as export_main
from unet.predict.cli import main as predict_main

from ..helpers.experiments import em_args, make_experiment, pair_folder, trainer_in_process
from .helpers import png, tiny_state, write_checkpoint

#: What a killed atomic write leaves (16 MB in the issue; a few bytes do here).
PARTIAL = b"half a checkpoint"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def leave(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in names]
    for path in paths:
        path.write_bytes(PARTIAL)
    return paths


def test_resume_removes_the_stale_temporaries_of_its_run_folder(tmp_path: Path, capsys, monkeypatch) -> None:
    from unet.train import trainer

    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    folder = make_experiment(tmp_path)
    args = ["-f", "config.yaml", "-t", "UNET", "-o", "overlay_every=100", *em_args(data, "-o", "num_epochs=2")]
    real = trainer.write_csv

    def killed_after_epoch_1(path: Path, rows: list) -> None:
        real(path, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "write_csv", killed_after_epoch_1)
    assert trainer_in_process(monkeypatch, folder, args) == 130
    monkeypatch.setattr(trainer, "write_csv", real)
    run = folder / "runs" / "exp"
    stale = leave(run, ".last.pt.ab12cd34.tmp", ".metrics.csv.zz_99xyq.tmp")
    stale += leave(run / "overlays", ".epoch_002.png.k3j4h5g6.tmp")
    kept = leave(run, ".notes.tmp", "mine.ab12cd34.tmp", ".last.pt.short.tmp")
    (run / ".best.pt.aaaaaaaa.tmp").symlink_to(kept[0])  # a link of that name is not ours to delete
    assert trainer_in_process(monkeypatch, folder, [*args, "-o", "operation_mode=resume"]) == 0
    assert "note: removed 3 temporary file(s)" in capsys.readouterr().err
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == PARTIAL for path in kept)
    assert (run / ".best.pt.aaaaaaaa.tmp").is_symlink()


def test_predict_continue_removes_its_own_stale_temporaries_only(tmp_path: Path, capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "best.pt", tiny_state("EM"))
    png(tmp_path / "in" / "a.png")
    args = ["-m", str(checkpoint), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--prepared",
            "--device", "cpu", "--no-progress"]
    assert predict_main(args) == 0
    png(tmp_path / "in" / "b.png", seed=1)
    out = tmp_path / "out"
    stale = leave(out, ".b.png.q1w2e3r4.tmp", ".predict.json.q1w2e3r4.tmp")
    kept = leave(out, ".c.png.q1w2e3r4.tmp", ".thesis.docx.q1w2e3r4.tmp")  # not outputs of this run
    assert predict_main([*args, "--continue"]) == 0
    assert "note: removed 2 temporary file(s)" in capsys.readouterr().err
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == PARTIAL for path in kept)


def test_a_later_export_removes_the_temporaries_of_its_output(tmp_path: Path, capsys) -> None:
    checkpoint = write_checkpoint(tmp_path / "run" / "best.pt", tiny_state("EM"))
    out = tmp_path / "exports" / "model.uqp"
    stale = leave(out.parent, ".model.uqp.a1b2c3d4.tmp", ".model.uqp.json.a1b2c3d4.tmp")
    kept = leave(out.parent, ".other.uqp.a1b2c3d4.tmp", ".model.uqp.json.a1b2c3d4.tmp.bak")
    assert export_main([str(checkpoint), "-o", str(out)]) == 0
    assert "removed 2 temporary file(s)" in capsys.readouterr().err
    assert not any(path.exists() for path in stale)
    assert all(path.read_bytes() == PARTIAL for path in kept)
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == ["model.uqp",
                                                                                          "model.uqp.json"]
