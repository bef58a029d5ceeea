"""The U-Net of SPEC §4: shapes, parameter count, which layers are quantized, init."""

from __future__ import annotations

import pytest
import torch

from quantizer import ActivationQuantizer, QuantConv2d, QuantSpec
from quantizer import reference as R
from unet.model import TOPOLOGY, TernaryTanh, UNet, quant_specs, stage_channels, walk


def test_full_precision_parameter_count_matches_the_paper_model() -> None:
    assert sum(p.numel() for p in UNet(64).parameters()) == 4_837_249


@pytest.mark.parametrize("mode", ["Normal", "FIXED", "INT", "BNN", "Ternary"])
def test_output_is_a_probability_map_of_the_input_size(mode: str) -> None:
    w, a = quant_specs(mode, 6, 0, 2, 4)
    model = UNet(4, w, a)
    x = torch.randn(2, 1, 48, 40)
    y = model(x)
    assert y.shape == (2, 1, 48, 40)
    assert torch.all((y >= 0) & (y <= 1))
    y.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_input_not_divisible_by_8_is_refused() -> None:
    with pytest.raises(ValueError, match="divisible by 8"):
        UNet(4)(torch.zeros(1, 1, 36, 40))


def test_weights_quantized_everywhere_but_first_block_and_head() -> None:
    spec = QuantSpec("fixed", 0, 4)
    model = UNet(8, spec, QuantSpec("fixed", 6, 0))
    quantized = {name for name, m in model.named_modules() if isinstance(m, QuantConv2d) and m.weight_quant == spec}
    all_convs = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert all_convs - quantized == {"enc1.0.0", "enc1.1.0", "head"}
    assert len(quantized) == 12
    acts = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
    assert len(acts) == 14 and all(str(m.spec) == "Q6.0" for m in acts)
    assert "weight=Q0.4" in repr(model.enc2)


def test_unit_order_is_conv_activation_batchnorm_dropout_quantizer() -> None:
    model = UNet(4, *quant_specs("FIXED", 6, 0, 0, 4), dropout=0.2)
    kinds = [type(m).__name__ for m in model.enc2[0]]
    assert kinds == ["QuantConv2d", "ReLU", "BatchNorm2d", "Dropout2d", "ActivationQuantizer"]
    assert model.enc2[0][2].momentum == pytest.approx(0.1)
    assert not any(isinstance(m, torch.nn.Dropout2d) for m in UNet(4).modules())


def test_quantized_convs_start_uniform_with_zero_bias_float_convs_do_not() -> None:
    torch.manual_seed(0)
    model = UNet(16, *quant_specs("FIXED", 6, 0, 0, 4))
    w = model.enc3[0][0].weight
    assert w.abs().max() <= 1 and w.abs().max() > 0.99 and w.std() > 0.5  # U(-1,1): std 0.577
    assert torch.all(model.enc3[0][0].bias == 0)
    assert model.enc1[1][0].weight.abs().max() < 0.2  # PyTorch default, bound 1/sqrt(fan_in)
    assert UNet(16).enc3[0][0].weight.abs().max() < 0.2


def test_quantized_model_uses_the_quantized_weight() -> None:
    model = UNet(4, *quant_specs("FIXED", 6, 0, 0, 2))
    conv = model.enc2[0][0]
    assert set(torch.unique(conv.quantized_weight()).tolist()) <= {-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0}


def test_mode_specs() -> None:
    assert quant_specs("normal", 1, 2, 3, 4) == (QuantSpec(), QuantSpec())
    assert quant_specs("Ternary", 1, 2, 3, 4) == (QuantSpec("ternary"), QuantSpec())
    assert quant_specs("BNN", 1, 2, 3, 4) == (QuantSpec("binary"), QuantSpec("binary"))
    assert quant_specs("INT", 5, 2, 3, 4) == (QuantSpec("int", 3), QuantSpec("int", 5))
    w, a = quant_specs("FIXED", 6, 0, 0, 4, "pow2")
    assert str(w) == "Q0.4, pow2" and str(a) == "Q6.0, pow2"


def test_ternarytanh_values_and_beta_is_saved_in_the_state_dict() -> None:
    # y = 0.5 tanh(b (2x - 1)) + 0.5 tanh(b (2x + 1)), worked out by hand (tanh from a table):
    # b = 3: x = 0.5 -> 0.5 tanh(0) + 0.5 tanh(6) = 0.5 * 0.99998771 = 0.49999386
    #        x = 1   -> 0.5 tanh(3) + 0.5 tanh(9) = 0.5 * (0.99505475 + 0.99999997) = 0.99752736
    #        x = 2   -> 0.5 tanh(9) + 0.5 tanh(15) = 0.99999998; x = 0 -> 0.5 tanh(-3) + 0.5 tanh(3) = 0
    #        x = 0.25 -> 0.5 tanh(-1.5) + 0.5 tanh(4.5) = 0.5 * (-0.90514825 + 0.99975321) = 0.04730248
    # b = 8: x = 0.25 -> 0.5 tanh(-4) + 0.5 tanh(12) = 0.5 * (-0.99932930 + 1.0) = 0.00033535
    x = torch.tensor([-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0])
    b3 = [-0.99999998, -0.99752736, -0.49999386, -0.04730248, 0.0, 0.04730248, 0.49999386, 0.99752736, 0.99999998]
    assert TernaryTanh(3.0)(x).tolist() == pytest.approx(b3, abs=1e-7)
    assert TernaryTanh(8.0)(torch.tensor([0.25])).item() == pytest.approx(0.00033535, abs=1e-7)
    assert TernaryTanh(3.0)(torch.tensor([0.0])).item() == 0.0
    grid = torch.linspace(-1.5, 1.5, 61)
    for b in (3.0, 5.5, 8.0):
        expected = [R.ternary_tanh(v, b) for v in grid.tolist()]
        assert TernaryTanh(b)(grid).tolist() == pytest.approx(expected, abs=1e-6)
    model = UNet(4, activation="ternarytanh")
    model.set_beta(5.5)
    assert model.beta() == 5.5
    state = model.state_dict()
    fresh = UNet(4, activation="ternarytanh")
    fresh.load_state_dict(state)
    assert fresh.beta() == 5.5
    assert UNet(4).beta() is None


def test_topology_gives_the_papers_widths_and_the_model_has_exactly_its_blocks() -> None:
    c = 8
    assert stage_channels(c) == {"enc1": (1, c), "enc2": (c, 2 * c), "enc3": (2 * c, 4 * c),
                                 "bottom": (4 * c, 4 * c), "dec3": (8 * c, 4 * c), "dec2": (6 * c, 2 * c),
                                 "dec1": (3 * c, c)}
    model = UNet(c)
    assert [name for name, _ in model.named_children()] == [s.name for s in TOPOLOGY] + ["head"]
    for stage in TOPOLOGY:
        units = list(model.block(stage))
        assert [(u.conv.in_channels, u.conv.out_channels) for u in units] == [
            stage_channels(c)[stage.name], (stage.width * c,) * 2]
    assert [name for name, _, _ in model.units()] == [f"{s.name}.{i}" for s in TOPOLOGY for i in range(2)]


def test_walk_visits_the_stages_in_order_with_pooling_and_skips() -> None:
    trace = walk("x", lambda stage, a: f"{stage.name}({a})", lambda a: f"pool({a})",
                 lambda a, skip: f"cat(up({a}),{skip})")
    enc1 = "enc1(x)"
    enc2 = f"enc2(pool({enc1}))"
    enc3 = f"enc3(pool({enc2}))"
    bottom = f"bottom(pool({enc3}))"
    dec3 = f"dec3(cat(up({bottom}),{enc3}))"
    dec2 = f"dec2(cat(up({dec3}),{enc2}))"
    assert trace == f"dec1(cat(up({dec2}),{enc1}))"


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_conv_unit_parts_by_name_and_state_dict_keys_stay_positional(dropout: float) -> None:
    model = UNet(2, *quant_specs("FIXED", 2, 4, 2, 4), activation="ternarytanh", dropout=dropout)
    unit = model.dec2[1]
    assert isinstance(unit.conv, QuantConv2d) and isinstance(unit.act, TernaryTanh)
    assert isinstance(unit.bn, torch.nn.BatchNorm2d) and isinstance(unit.quant, ActivationQuantizer)
    assert (unit.drop is None) == (dropout == 0) and unit.quant is unit[-1]
    # an old-style state dict (the keys every checkpoint so far holds) loads strictly
    old = {}
    for stage in TOPOLOGY:
        for i in range(2):
            prefix = f"{stage.name}.{i}"
            c_in, c_out = stage_channels(2)[stage.name] if i == 0 else (2 * stage.width,) * 2
            old[f"{prefix}.0.weight"] = torch.full((c_out, c_in, 3, 3), 0.25)
            old[f"{prefix}.0.bias"] = torch.zeros(c_out)
            old[f"{prefix}.1.beta"] = torch.tensor(5.0)
            for name in ("weight", "bias", "running_mean", "running_var"):
                old[f"{prefix}.2.{name}"] = torch.ones(c_out)
            old[f"{prefix}.2.num_batches_tracked"] = torch.tensor(3)
    old["head.weight"], old["head.bias"] = torch.zeros(1, 2, 3, 3), torch.zeros(1)
    model.load_state_dict(old)
    assert torch.equal(unit.conv.weight, torch.full_like(unit.conv.weight, 0.25)) and model.beta() == 5.0
