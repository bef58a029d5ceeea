"""``python -m unet.export RUN --format hls4ml`` (issue 26): the hls4ml project of the integer U-Net
compiles with g++ and its C simulation equals the integer engine on every code, for the headline
pow2 model and FIXED nearest saturate (models trained through the real trainer, base_channels 4,
one compile per mode); refused modes name the reason; the hardware figures are written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from unet.errors import UserError
from unet.export.hls4ml.build import layer_list
from unet.export.hls4ml.check import adversarial_inputs, fit
from unet.integer import IntegerUNet

from ..conftest import REPO, run_command
from ..helpers.export_cases import trained

pytest.importorskip("hls4ml")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
if shutil.which("g++") is None:
    pytestmark.append(pytest.mark.skip(reason="g++ is needed for hls4ml's C simulation"))

#: Modes compiled through the command, and their input size: the headline at 32 x 32 (53 s on 2
#: idle cores), saturate at 16 x 16 (the unrolled io_parallel project builds in a fraction).
COMPILED = {"pow2_q6.0_q0.4": 32, "saturate_q6.0_q0.4": 16}


@pytest.fixture(scope="module", params=list(COMPILED))
def exported(request, trained_em, tmp_path_factory):
    """One mode's project, exported and checked by the command (``--check --layers``) once."""
    mode = request.param
    hw = COMPILED[mode]
    out = tmp_path_factory.mktemp(f"hls-{mode}") / "prj"
    images = trained_em.data / "val" / "images"
    result = run_command(["-m", "unet.export", str(trained_em.run_dir(mode)), "--format", "hls4ml", "--input-size",
                          str(hw), str(hw), "-o", str(out), "--check", str(images), "--layers"], cwd=REPO, timeout=1800)
    return mode, out, result


def test_c_simulation_equals_the_integer_engine(exported) -> None:
    mode, out, result = exported
    assert result.returncode == 0, result.stdout + result.stderr
    assert "C simulation equals the integer engine" in result.stdout
    record = json.loads((out / "export.json").read_text())
    check = record["check"]
    assert check["images"] == 2 + 4  # the two validation slices and the four adversarial inputs
    assert set(check["differing"]) == {f"{b}.{i}" for b in ("enc2", "enc3", "bottom", "dec3", "dec2", "dec1")
                                       for i in range(2)}
    assert not any(check["differing"].values()) and check["mask_differing"] == 0
    assert (out / "firmware" / "unet.cpp").is_file() and (out / "firmware" / "nnet_utils" / "nnet_unet.h").is_file()
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["format"] == "hls4ml" and sidecar["file_bytes"] > 0


def test_hardware_figures_are_written(exported) -> None:
    mode, out, _ = exported
    figures = json.loads((out / "hardware.json").read_text())
    units = [x for x in figures["layers"] if x["arithmetic"] == "integer"]
    assert len(units) == 12
    for x in units:
        assert x["weight_memory_bits"] == x["in_channels"] * 9 * x["out_channels"] * x["weight_bits"]
        assert x["accumulator_bound"] < 2 ** (x["accumulator_bits"] - 1)
        assert x["macs_per_layer_pixel"] == x["in_channels"] * 9 * x["out_channels"]
    assert "vitis_hls" in (out / "hardware.md").read_text()


def test_differences_are_reported_per_layer() -> None:
    """A failed comparison names the differing count of each layer."""
    from unet.export.hls4ml.check import CheckFailed, check_or_raise

    with pytest.raises(CheckFailed, match="dec1.1: 5"):
        check_or_raise({"images": 1, "differing": {"enc2.0": 0, "dec1.1": 5}, "mask_differing": 0})


@pytest.mark.parametrize("mode, reason", [("int8", "per-batch|whole batch"), ("ternary", "float activations"),
                                          ("wrap_q8.8", "fixed table")])
def test_refused_modes_name_the_reason(mode: str, reason: str) -> None:
    engine = IntegerUNet.from_model(trained(mode))
    with pytest.raises(UserError, match=reason):
        layer_list(engine, (16, 16))


def test_existing_output_needs_overwrite(trained_em, tmp_path) -> None:
    out = tmp_path / "prj"
    out.mkdir()
    result = run_command(["-m", "unet.export", str(trained_em.run_dir("saturate_q6.0_q0.4")), "--format", "hls4ml",
                          "--input-size", "32", "32", "-o", str(out)], cwd=REPO)
    assert result.returncode == 2 and "not an hls4ml project" in result.stderr


def test_fit_crops_the_centre_and_pads_evenly() -> None:
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_array_equal(fit(image, (4, 4)), image[3:7, 3:7])
    padded = fit(image[:3, :3], (6, 5))
    assert padded.shape == (6, 5) and padded[1:4, 1:4].sum() == image[:3, :3].sum()
    assert padded.sum() == image[:3, :3].sum()
    assert adversarial_inputs((8, 8)).shape == (4, 1, 8, 8) and torch.isfinite(adversarial_inputs((8, 8))).all()


def test_check_catches_a_table_that_differs(tmp_path) -> None:
    """The comparison is not vacuous: an 8x8 project equals its engine at every unit, and after one
    code of the engine's last table changes, exactly that layer is reported."""
    from unet.export.hls4ml.build import build_hls_model
    from unet.export.hls4ml.check import compare
    from unet.export.hls4ml.compile import compile_project, write_project

    engine = IntegerUNet.from_model(trained("saturate_q6.0_q0.4"), fast=False)  # the fast path reads no table
    hls_model = build_hls_model(engine, (8, 8), tmp_path / "prj")
    hls_model.config.trace_output = True
    write_project(hls_model)
    compile_project(hls_model)
    x = torch.cat([torch.randn(2, 1, 8, 8), adversarial_inputs((8, 8))])
    result = compare(hls_model, engine, x, layers=True)
    assert not any(result["differing"].values()) and result["mask_differing"] == 0
    lo, hi, thresholds, codes = engine.units["dec1.1"].requant.table
    engine.units["dec1.1"].requant.table = (lo, hi, thresholds, codes + 1)
    result = compare(hls_model, engine, x, layers=True)
    assert result["differing"]["dec1.1"] > 0
    assert not any(v for k, v in result["differing"].items() if k != "dec1.1")


def _wrap_q33() -> torch.nn.Module:
    """FIXED nearest wrap Q3.3 activations (the non-monotone quantizer) after 4 Adam steps on blobs."""
    from quantizer import QuantSpec
    from unet.model import UNet

    from ..helpers.export_cases import blobs

    torch.manual_seed(1)
    model = UNet(4, QuantSpec("fixed", 0, 4, "nearest", "wrap"), QuantSpec("fixed", 3, 3, "nearest", "wrap"))
    x, y = blobs(8, 32, 0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("mode", ["wrap_q6.0_q0.4", "wrap_q3.3", "bnn"])
def test_wrap_and_bnn_are_exact_at_8x8(mode: str, tmp_path) -> None:
    """Modes hls4ml's own quantizers cannot express go through the threshold tables exactly."""
    from unet.export.hls4ml.build import build_hls_model
    from unet.export.hls4ml.check import compare
    from unet.export.hls4ml.compile import compile_project, write_project

    engine = IntegerUNet.from_model(_wrap_q33() if mode == "wrap_q3.3" else trained(mode))
    hls_model = build_hls_model(engine, (8, 8), tmp_path / "prj")
    hls_model.config.trace_output = True
    write_project(hls_model)
    compile_project(hls_model)
    x = torch.cat([3 * torch.randn(3, 1, 8, 8), adversarial_inputs((8, 8))])
    result = compare(hls_model, engine, x, layers=True)
    assert not any(result["differing"].values()) and result["mask_differing"] == 0
