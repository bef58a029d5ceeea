"""``precision: bf16``: the float layers under autocast, every quantizer in float32 (on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantizer import ActivationQuantizer, QuantConv2d, QuantSpec
from unet.precision import autocast

from ..helpers.experiments import make_experiment, pair_folder, read_metrics, train_in_process

CPU = torch.device("cpu")
SPECS = [QuantSpec("fixed", 8, 8, "nearest", "saturate"), QuantSpec("fixed", 6, 0, "pow2"),
         QuantSpec("fixed", 0, 4, "nearest", "wrap"), QuantSpec("int", 4), QuantSpec("binary")]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_activation_quantizer_under_bf16_autocast_equals_the_float32_quantizer(spec: QuantSpec) -> None:
    x = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 400).to(torch.bfloat16)
    expected = spec(x.float())
    for inplace in (False, True):
        with autocast(CPU, "bf16"):
            out = ActivationQuantizer(spec, inplace)(x.clone())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("spec", [QuantSpec("fixed", 8, 8, "nearest", "saturate"), QuantSpec("int", 8)], ids=str)
def test_the_same_quantizer_computed_in_bfloat16_differs(spec: QuantSpec) -> None:
    """Why the cast matters: in bfloat16 (8 significant bits) Q8.8's saturation value 255.996 and
    INT8's min-max scale are rounded, so values leave the float32 quantizer's grid."""
    x = (torch.randn(2000, generator=torch.Generator().manual_seed(0)) * 400).to(torch.bfloat16)
    in_bf16 = spec(x)
    in_float32 = spec(x.float())
    assert in_bf16.dtype == torch.bfloat16
    assert not torch.equal(in_bf16.float(), in_float32)
    with autocast(CPU, "bf16"):
        torch.testing.assert_close(ActivationQuantizer(spec)(x), in_float32, rtol=0, atol=0)


@pytest.mark.parametrize("spec", [*SPECS[:3], QuantSpec("ternary")], ids=str)
def test_conv_weight_under_autocast_is_quantized_in_float32(spec: QuantSpec) -> None:
    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=spec)
    torch.nn.init.uniform_(conv.weight, -1.5, 1.5)
    expected = spec(conv.weight.detach())
    with autocast(CPU, "bf16"):
        quantized = conv.quantized_weight()
        out = conv(torch.randn(1, 3, 8, 8))
    torch.testing.assert_close(quantized.detach(), expected, rtol=0, atol=0)
    assert out.dtype == torch.bfloat16  # the convolution itself ran under autocast


def test_precision_32_changes_nothing() -> None:
    spec = QuantSpec("fixed", 2, 3)
    x = torch.randn(50)
    with autocast(CPU, "32"):
        assert not torch.is_autocast_enabled("cpu")
        torch.testing.assert_close(ActivationQuantizer(spec)(x), spec(x), rtol=0, atol=0)


@pytest.mark.slow
def test_a_bf16_run_trains_and_its_weights_stay_float32(tmp_path: Path, monkeypatch) -> None:
    data = pair_folder(tmp_path / "data", n_train=4, n_val=2)
    folder = make_experiment(tmp_path, "em", "a8.0_w0.8")
    code = train_in_process(monkeypatch, folder, "-o", f"dataset_path={data}", "-o", "crop_size=[32,32]",
                            "-o", "base_channels=4", "-o", "batch_size=2", "-o", "val_batch_size=2",
                            "-o", "num_epochs=2", "-o", "precision=bf16")
    assert code == 0
    rows = read_metrics(folder / "runs" / "exp" / "metrics.csv")
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)
    state = torch.load(folder / "runs" / "exp" / "best.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert state["config"]["precision"] == "bf16"
