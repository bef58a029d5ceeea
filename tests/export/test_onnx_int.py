"""The integer ONNX (unet.export.onnx_int) under onnxruntime against the integer engine.

Tiny models (base_channels 4) trained a few steps (tests/test_integer.py's ``trained``) of every
mode the export can express: the integer part must give the engine's codes at every unit, on
validation-like and adversarial inputs (x1000, noise, constants); the whole graph too wherever
onnxruntime's float first block gives PyTorch's codes (its summation order may move a code
within float rounding of a step, counted by ``first_block_flips``).
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch
import torch.nn.functional as F

from unet.errors import ConfigError, UserError
from unet.export import int_layers
from unet.export.int_layers import maxpool_codes, threshold_codes, upsample_codes
from unet.export.onnx import Graph, cpu_session
from unet.export.onnx_int import IntegerOnnxForward, export_onnx_int, first_block_flips, integer_onnx_model
from unet.integer import IntegerUNet
from unet.integer.kernels import maxpool2_codes, upsample2_codes
from unet.model import UNet

from ..helpers.integer_cases import CL, adversarial_inputs, trained

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CASES = {
    "pow2 Q6.0/Q0.4": dict(mode="FIXED", rounding="pow2"),
    "Q6.0/Q0.4 saturate": dict(mode="FIXED", overflow="saturate"),
    "Q6.0/Q0.4 wrap": dict(mode="FIXED"),
    "Q4.0/Q0.2 saturate": dict(mode="FIXED", act=(4, 0), weight=(0, 2), overflow="saturate"),
    "Q6.0/Q0.4 tanh": dict(mode="FIXED", activation="tanh"),
    "Q3.3 wrap": dict(mode="FIXED", act=(3, 3), weight=(0, 4)),  # codes not monotone in the value
    "BNN": dict(mode="BNN"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_onnxruntime_gives_the_integer_engine_codes(case):
    model = trained(**CASES[case])
    engine = IntegerUNet.from_model(model)
    from_codes = IntegerOnnxForward(model, (32, 32), threads=1, taps=True, start="codes")
    whole = IntegerOnnxForward(model, (32, 32), threads=1, taps=True)
    ops = {n.op_type for n in whole.proto.graph.node}
    assert "MatMulInteger" in ops and ops.isdisjoint({"MaxPool", "Resize", "ConvInteger"})
    assert sum(n.op_type == "Conv" for n in whole.proto.graph.node) == 3  # first block (2) and head
    for name, x in adversarial_inputs().items():
        expected = engine.forward_codes(x)
        # the integer part, from the engine's own first-block codes: every unit, bit for bit
        got = from_codes.forward_codes(expected["enc1.1"])
        assert got.keys() == {k for k in expected if not k.startswith("enc1.")}
        for unit in got:
            assert torch.equal(got[unit], expected[unit]), (name, unit)
        # the whole graph: onnxruntime's float first block, then the same integers
        got = whole.forward_codes(x)
        assert got.keys() == expected.keys()
        if torch.equal(got["enc1.1"], expected["enc1.1"]):
            for unit in expected:
                assert torch.equal(got[unit], expected[unit]), (name, unit)
            # the float head sums in onnxruntime's order: the last bits of the probabilities
            torch.testing.assert_close(whole(x), engine(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["pow2 Q6.0/Q0.4", "Q6.0/Q0.4 tanh"])
def test_decoder_phase_convolution_at_every_size(case):
    """The decoder's first units run as phase kernels on the coarse codes with their outer rows and
    columns recomputed from strips: exact on images down to 8 pixels (a one-pixel coarse map),
    non-square ones and batches, with pow2's int64 accumulators and tanh's signed codes."""
    model = trained(**CASES[case])
    engine = IntegerUNet.from_model(model)
    graph = IntegerOnnxForward(model, (32, 32), threads=1, taps=True, start="codes")
    nodes = graph.proto.graph.node
    assert sum(n.op_type == "Transpose" and n.output[0].startswith("phases") for n in nodes) == 3
    wide = any(n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.INT64 for n in nodes)
    assert wide == case.startswith("pow2")  # pow2's decoder accumulators need int64
    g = torch.Generator().manual_seed(5)
    for shape in [(1, 1, 8, 8), (2, 1, 8, 16), (1, 1, 24, 16), (1, 1, 16, 40)]:
        x = (torch.rand(shape, generator=g) * 3 - 1).contiguous(memory_format=CL)
        expected = engine.forward_codes(x)
        got = graph.forward_codes(expected["enc1.1"])
        for unit in got:
            assert torch.equal(got[unit], expected[unit]), (shape, unit)


def test_first_block_flips_are_rare_on_trained_models():
    flips = total = 0
    for case in CASES:
        model = trained(**CASES[case])
        f, n = first_block_flips(model, torch.cat(list(adversarial_inputs().values())), threads=1)  # one batch
        flips, total = flips + f, total + n
    assert flips <= total * 1e-3, (flips, total)


def test_negative_gamma_flips_the_comparisons():
    source = trained("FIXED", overflow="saturate")
    model = UNet(4, source.weight_quant, source.act_quant).to(memory_format=CL)
    model.load_state_dict(source.state_dict())
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight[::2] *= -3.0
    model.eval()
    engine = IntegerUNet.from_model(model)
    graph = IntegerOnnxForward(model, (32, 32), threads=1, taps=True, start="codes")
    assert any(n.name.startswith("oriented") for n in graph.proto.graph.node)
    for name, x in adversarial_inputs().items():
        expected = engine.forward_codes(x)
        got = graph.forward_codes(expected["enc1.1"])
        assert all(torch.equal(got[u], expected[u]) for u in got), name


def _run_ops(build, codes: torch.Tensor) -> torch.Tensor:
    from onnx import TensorProto, helper

    g = Graph()
    out = build(g, "x")
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.INT32, [None] * 4)],
                              [helper.make_tensor_value_info(out, TensorProto.INT32, [None] * 4)], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = min(proto.ir_version, 8)
    nhwc = codes.permute(0, 2, 3, 1).to(torch.int32).contiguous()  # the integer part runs NHWC
    (result,) = cpu_session(proto, 1).run(None, {"x": nhwc.numpy()})
    return torch.from_numpy(result).to(torch.int64).permute(0, 3, 1, 2)


def test_pooling_and_upsampling_of_codes_match_the_engine():
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(-5000, 5001, (2, 3, 8, 6), generator=g)
    assert torch.equal(_run_ops(maxpool_codes, codes), maxpool2_codes(codes))
    assert torch.equal(_run_ops(upsample_codes, codes), upsample2_codes(codes))
    up = F.interpolate(codes.double(), scale_factor=2, mode="bilinear", align_corners=False) * 16
    assert torch.equal(_run_ops(upsample_codes, codes), up.to(torch.int64))


def test_refused_modes_name_the_reason(tmp_path):
    with pytest.raises(UserError, match="each batch's range"):
        integer_onnx_model(trained("INT", act=(8, 0), weight=(8, 0)), (32, 32))
    with pytest.raises(UserError, match="Ternary"):
        integer_onnx_model(trained("Ternary", activation="ternarytanh"), (32, 32))
    with pytest.raises(UserError, match="no static threshold table"):
        export_onnx_int(trained("FIXED", act=(8, 8), weight=(8, 8)), tmp_path / "m.onnx", (32, 32), {})
    with pytest.raises(UserError, match="not quantized"):
        integer_onnx_model(UNet(4), (32, 32))
    with pytest.raises(UserError, match="multiples of 8"):
        integer_onnx_model(trained("BNN"), (36, 40))
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_file_has_metadata_and_dynamic_batch_and_size(tmp_path):
    model = trained("FIXED", overflow="saturate")
    path = tmp_path / "model.int.onnx"
    export_onnx_int(model, path, (64, 64), {"config": {"quantization": "FIXED"}})
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["export_format"] == "onnx-int" and json.loads(props["input_hw"]) == [64, 64]
    assert props["activation_format"].startswith("Q6.0")
    # the decoder's edge strips name their unit's weights and tables again instead of copying them
    big = [i.raw_data for i in proto.graph.initializer if len(i.raw_data) >= int_layers.SHARE_FROM_BYTES]
    assert big and len(big) == len(set(big))
    x = torch.rand(3, 1, 48, 40)  # another batch and a non-square size
    (prob,) = cpu_session(proto, 1).run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(prob), IntegerUNet.from_model(model)(x), atol=1e-5, rtol=0)


def test_forward_contract():
    forward = IntegerOnnxForward(trained("BNN"), (32, 32), threads=1)
    out = forward(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="divisible by 8"):
        forward(torch.zeros(1, 1, 36, 40))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        forward(torch.zeros(1, 2, 32, 32))



def test_command_and_predict_engine_dispatch():
    from unet.export.__main__ import FORMATS, _exporter
    from unet.predict.cli import ENGINES, make_engine

    assert FORMATS["onnx-int"] == ".int.onnx" and _exporter("onnx-int") is export_onnx_int
    assert "onnx-int" in ENGINES
    model = trained("FIXED", rounding="pow2")
    engine = make_engine("onnx-int", model, (32, 32))
    assert isinstance(engine, IntegerOnnxForward)
    x = adversarial_inputs()["validation"]
    torch.testing.assert_close(engine(x), IntegerUNet.from_model(model)(x), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="--engine onnx-int cannot run this model: INT"):
        make_engine("onnx-int", trained("INT", act=(8, 0), weight=(8, 0)), (32, 32))


@pytest.mark.parametrize(("case", "tables"), [
    *((case, True) for case in ("pow2 Q6.0/Q0.4", "Q6.0/Q0.4 saturate", "Q6.0/Q0.4 wrap", "Q4.0/Q0.2 saturate",
                                 "Q3.3 wrap")),
    *((case, False) for case in ("Q6.0/Q0.4 saturate", "Q6.0/Q0.4 wrap", "Q4.0/Q0.2 saturate", "Q3.3 wrap")),
])
def test_threshold_search_equals_the_engine_tables_over_the_whole_range(case, tables, monkeypatch):
    """Every unit's requantization graph (one table read where the table fits; else the float32
    first guess + binary search, or the full search) against the engine's table lookup on
    accumulators spread over each channel's whole reachable range, every threshold and its
    neighbours."""
    from onnx import TensorProto, helper

    if not tables:
        monkeypatch.setattr(int_layers, "LUT_LIMIT_BYTES", 0)
    engine = IntegerUNet.from_model(trained(**CASES[case]))
    g = torch.Generator().manual_seed(11)
    looked_up = []
    for unit in engine.units.values():
        orientation, thresholds, _ = unit.requant.thresholds()
        bound = unit.static_bound
        wide = bound >= 2**31 - 1
        dtype, np_dtype = (TensorProto.INT64, torch.int64) if wide else (TensorProto.INT32, torch.int32)
        points = thresholds[thresholds != 2**63 - 1].reshape(-1, 1) + torch.arange(-1, 2)
        points = torch.cat([points.reshape(-1), torch.randint(-bound, bound + 1, (4000,), generator=g),
                            torch.tensor([-bound, bound, 0])]).clamp(-bound, bound)
        reach = unit.requant.bound  # each channel's largest |acc| (the table covers it; beyond: unreachable)
        oriented = torch.maximum(torch.minimum(points.reshape(1, 1, -1, 1), reach), -reach)
        acc = oriented * orientation  # NHWC, every channel
        gr = Graph()
        out = threshold_codes(gr, "acc", unit, dtype)
        looked_up.append(any(i.name.startswith("lut_") for i in gr.initializers))
        graph = helper.make_graph(gr.nodes, "t", [helper.make_tensor_value_info("acc", dtype, [None] * 4)],
                                  [helper.make_tensor_value_info(out, TensorProto.INT32, [None] * 4)],
                                  gr.initializers)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        proto.ir_version = min(proto.ir_version, 8)
        (got,) = cpu_session(proto, 1).run(None, {"acc": acc.to(np_dtype).contiguous().numpy()})
        expected = unit.requant(acc.permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        assert torch.equal(torch.from_numpy(got).to(torch.int64), expected), unit.name
    # pow2's tables span up to 2^31 (the search); Q6.0's and Q4.0's fit (Q3.3 wrap: most units)
    assert any(looked_up) == (tables and not case.startswith("pow2")), looked_up
