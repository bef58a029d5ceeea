"""The packed export: bit packing, an exact round trip for every quantization mode, the file's
size against ``packed_size_bytes`` and the results table, and the ``python -m unet.export`` command."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unet.errors import DataError
from unet.export import __main__ as cli
from unet.export import packed_size_bytes, read_packed, write_packed
from unet.export.packed import pack_codes, read_header, unpack_codes
from unet.memory import float32_size_bytes
from unet.model import UNet, quant_specs

from ..conftest import REPO, run_command
from ..helpers.experiments import make_experiment
from ..helpers.models import random_batch, trained_unet

MODES = {
    "a8.0_w0.8-wrap": ("FIXED", 8, 0, 0, 8, "nearest", "wrap"),
    "a6.0_w0.4-wrap": ("FIXED", 6, 0, 0, 4, "nearest", "wrap"),
    "a4.0_w0.2-saturate": ("FIXED", 4, 0, 0, 2, "nearest", "saturate"),
    "a8.8_w8.8-wrap": ("FIXED", 8, 8, 8, 8, "nearest", "wrap"),
    "a6.0_w0.4-pow2": ("FIXED", 6, 0, 0, 4, "pow2", "wrap"),
    "a8.8_w8.8-pow2": ("FIXED", 8, 8, 8, 8, "pow2", "wrap"),
    "int8": ("INT", 8, 0, 8, 0, "nearest", "wrap"),
    "int4": ("INT", 4, 0, 4, 0, "nearest", "wrap"),
    "bnn": ("BNN", 0, 0, 0, 0, "nearest", "wrap"),
    "ternary": ("Ternary", 0, 0, 0, 0, "nearest", "wrap"),
    "float": ("Normal", 0, 0, 0, 0, "nearest", "wrap"),
}


def trained(mode: tuple, activation: str = "relu") -> UNet:
    """A base_channels 4 U-Net after 2 Adam steps on random 16x16 data (weights off their init),
    laid out channels_last as the trainer builds it (read_packed returns that layout)."""
    return trained_unet(quant_specs(*mode), random_batch, steps=2, lr=0.05, seed=1, activation=activation,
                        dropout=0.1, channels_last=True)


# --- bit packing ----------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 12), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    limit = 2 ** (bits - 1) - 1
    values = st.sampled_from([-1, 1]) if bits == 1 else st.integers(-limit, limit)
    codes = torch.tensor(data.draw(st.lists(values, min_size=0, max_size=40)), dtype=torch.int64)
    blob = pack_codes(codes, bits)
    assert len(blob) == -(-codes.numel() * bits // 8)
    assert torch.equal(unpack_codes(blob, codes.numel(), bits), codes)


def test_pack_layout_is_sign_magnitude_msb_first():
    # 3-bit fields: +1 -> 001, -2 -> 110, +3 -> 011, padded: 00111001 1(0000000)
    assert pack_codes(torch.tensor([1, -2, 3]), 3) == bytes([0b00111001, 0b10000000])
    assert pack_codes(torch.tensor([1, -1, -1, 1]), 1) == bytes([0b10010000])
    with pytest.raises(ValueError, match="does not fit"):
        pack_codes(torch.tensor([4]), 3)
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([0]), 1)


# --- the round trip, every mode ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODES))
def test_round_trip_is_exact(tmp_path: Path, name: str):
    model = trained(MODES[name], activation="ternarytanh" if name == "a8.0_w0.8-wrap" else "relu")
    path = tmp_path / "m.uqp"
    header = write_packed(model, path, {"config": {"note": "x"}})
    back = read_packed(path)
    for a, b in zip(model.quantized_convs(), back.quantized_convs(), strict=True):
        assert torch.equal(a.quantized_weight(), b.quantized_weight())
    assert len(list(back.quantized_convs())) == (0 if name == "float" else 12)
    original = model.state_dict()
    for key, value in back.state_dict().items():
        if "num_batches_tracked" in key or any(key == f"{n}.weight" for n, _ in _quantized(model)):
            continue
        assert torch.equal(value, original[key]), key
    model.eval()
    back.eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    # the file: 20-byte preamble, JSON header, payload of exactly packed_size_bytes
    _, start = read_header(path)
    assert path.stat().st_size == start + packed_size_bytes(model) == start + header["payload_bytes"]
    assert header["config"] == {"note": "x"} and header["format_version"] == 1
    assert header["float32_bytes"] == float32_size_bytes(model)
    if name == "float":
        assert packed_size_bytes(model) == float32_size_bytes(model)
    else:
        assert packed_size_bytes(model) < float32_size_bytes(model)


def _quantized(model: UNet):
    return [(n, m) for n, m in model.named_modules() if m in set(model.quantized_convs())]


def test_header_records_widths_scales_and_levels(tmp_path: Path):
    model = trained(MODES["a6.0_w0.4-pow2"])
    header = write_packed(model, tmp_path / "m.uqp")
    packed = [t for t in header["tensors"] if t["encoding"] == "packed"]
    assert len(packed) == 12
    first = packed[0]
    assert first["bits"] == 5 and first["quant"]["pow2_min_exponent"] == -8
    assert first["levels"] == [0.0] + [2.0**e for e in range(-8, 0)] + [0.9375]
    assert first["nbytes"] == -(-np.prod(first["shape"]) * 5 // 8)
    assert header["model"]["weight_quant"]["rounding"] == "pow2"
    nearest = write_packed(trained(MODES["a6.0_w0.4-wrap"]), tmp_path / "n.uqp")
    record = next(t for t in nearest["tensors"] if t["encoding"] == "packed")
    assert record["bits"] == 6 and record["scale"] == 2.0**-4
    ternary = write_packed(trained(MODES["ternary"]), tmp_path / "t.uqp")
    names = [t["name"] for t in ternary["tensors"]]
    record = next(t for t in ternary["tensors"] if t["encoding"] == "packed")
    assert record["bits"] == 2 and names[names.index(record["name"]) + 1] == record["scale_tensor"]


def test_float16_halves_the_float_layers_and_keeps_quantized_weights(tmp_path: Path):
    model = trained(MODES["a6.0_w0.4-wrap"])
    write_packed(model, tmp_path / "h.uqp", float16=True)
    back = read_packed(tmp_path / "h.uqp")
    for a, b in zip(model.quantized_convs(), back.quantized_convs(), strict=True):
        assert torch.equal(a.quantized_weight(), b.quantized_weight())
    assert torch.equal(back.head.weight, model.head.weight.detach().half().float())
    quantized = sum(-(-c.weight.numel() * 6 // 8) for c in model.quantized_convs())
    floats = float32_size_bytes(model) - 4 * sum(c.weight.numel() for c in model.quantized_convs())
    assert packed_size_bytes(model, float16=True) == quantized + floats // 2


def test_damaged_files_are_refused(tmp_path: Path):
    with pytest.raises(DataError, match="not a packed"):
        (tmp_path / "x.uqp").write_bytes(b"hello world, not a model at all")
        read_packed(tmp_path / "x.uqp")
    write_packed(trained(MODES["bnn"]), tmp_path / "m.uqp")
    data = (tmp_path / "m.uqp").read_bytes()
    (tmp_path / "cut.uqp").write_bytes(data[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_packed(tmp_path / "cut.uqp")
    with pytest.raises(DataError, match="does not exist"):
        read_packed(tmp_path / "missing.uqp")


# --- the command -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 1-epoch EM Q6.0 / Q0.4 run (base_channels 2) trained through the real trainer."""
    root = tmp_path_factory.mktemp("export")
    prep = run_command(["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "6", "--synthetic-size",
                        "96", "--resize", "48", "--crop", "32", "--out", str(root / "data")], cwd=REPO)
    assert prep.returncode == 0, prep.stderr
    experiments = root / "em"
    folder = make_experiment(experiments, name="a6.0_w0.4")
    overrides = ["-o", "base_channels=2", "-o", "num_epochs=1", "-o", f"dataset_path={root / 'data'}",
                 "-o", "crop_size=[32,32]", "-o", "batch_size=4", "-o", "val_batch_size=4"]
    trained_run = run_command(["em_unet.py", "-f", "config.yaml", "-t", "UNET", *overrides], cwd=folder)
    assert trained_run.returncode == 0, trained_run.stdout + trained_run.stderr
    return {"root": root, "experiments": experiments, "run_dir": folder / "runs" / "a6.0_w0.4",
            "overrides": overrides}


def test_command_exports_and_matches_the_results_column(run: dict):
    root, run_dir = run["root"], run["run_dir"]
    out = root / "model.uqp"
    result = run_command(["-m", "unet.export", str(run_dir), "--format", "packed", "-o", str(out)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    record = json.loads(Path(f"{out}.json").read_text())
    assert f"wrote {out}: {out.stat().st_size:,} bytes" in result.stdout
    assert f"float checkpoint {run_dir / 'best.pt'}: {(run_dir / 'best.pt').stat().st_size:,} bytes" in result.stdout
    assert record["file_bytes"] == out.stat().st_size == record["header_bytes"] + record["payload_bytes"]
    assert record["checkpoint_bytes"] == (run_dir / "best.pt").stat().st_size
    header, _ = read_header(out)
    assert header["config"]["experiment_name"] == "a6.0_w0.4" and header["source"]["epoch"] == 1
    assert header["source"]["bytes"] == record["checkpoint_bytes"]
    # the exported model is the checkpoint's, quantized weights bit for bit
    model, _, _ = cli.model_from_checkpoint(run_dir / "best.pt")
    back = read_packed(out)
    for a, b in zip(model.quantized_convs(), back.quantized_convs(), strict=True):
        assert torch.equal(a.quantized_weight(), b.quantized_weight())
    # the results table's memory column is this file's tensor payload, to the byte
    table = run_command(["-m", "unet.results", str(run["experiments"]), "--out", str(root / "results"),
                         "--no-overlays", *run["overrides"]], cwd=REPO)
    assert table.returncode == 0, table.stderr
    row = next(r for r in _csv(root / "results" / "results.csv") if r["experiment"] == "a6.0_w0.4")
    assert round(float(row["weight_memory_mib"]) * 2**20) == record["payload_bytes"]


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_command_refuses_to_overwrite_and_names_bad_sources(run: dict, tmp_path: Path, capsys):
    out = tmp_path / "m.uqp"
    out.write_bytes(b"keep me")
    result = run_command(["-m", "unet.export", str(run["run_dir"]), "-o", str(out)], cwd=REPO)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "--overwrite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and out.read_bytes() == b"keep me"
    assert cli.main([str(run["run_dir"]), "-o", str(out), "--overwrite"]) == 0
    assert out.read_bytes()[:8] == b"UNETQPK\0"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    # a missing path, a folder without best.pt, a file that is no checkpoint
    for source, words in ((tmp_path / "nothing", "does not exist"), (tmp_path, "no best.pt"), (junk, "junk.pt")):
        capsys.readouterr()
        assert cli.main([str(source), "-o", str(tmp_path / "n.uqp")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "n.uqp").exists()


def test_onnx_formats_dispatch_lazily(run: dict, tmp_path: Path, monkeypatch, capsys):
    calls = []

    def fake_export(model, path, input_hw, metadata):
        calls.append((model.training, input_hw, metadata["config"]["experiment_name"]))
        Path(path).write_bytes(b"onnx")

    monkeypatch.setitem(sys.modules, "unet.export.onnx", types.SimpleNamespace(export_onnx=fake_export))
    out = tmp_path / "m.onnx"
    assert cli.main([str(run["run_dir"]), "--format", "onnx", "-o", str(out)]) == 0
    assert calls == [(False, (32, 32), "a6.0_w0.4")]
    assert json.loads(Path(f"{out}.json").read_text())["file_bytes"] == 4
    assert cli.main([str(run["run_dir"]), "--format", "onnx", "-o", str(tmp_path / "b.onnx"),
                     "--input-size", "64", "48"]) == 0
    assert calls[-1][1] == (64, 48)

    def missing(name, *args, **kwargs):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    capsys.readouterr()
    assert cli.main([str(run["run_dir"]), "--format", "qonnx", "-o", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --format qonnx is not available") and not (tmp_path / "q.onnx").exists()
