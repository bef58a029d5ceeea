"""Validation with ``val_bn_mode: train``: BatchNorm uses batch statistics, Dropout stays off
(issue 12, item 3)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from unet.config import load_config
from unet.model import build_model
from unet.train.evaluation import evaluate

from ..conftest import REPO


def tiny_config(val_bn_mode: str):
    overrides = ["dropout=0.5", f"val_bn_mode={val_bn_mode}", "base_channels=4", "crop_size=[16,16]",
                 "val_batch_size=2", "quantization=normal"]
    return load_config(REPO / "EM_BASE" / "config.yaml", REPO / "em" / "a6.0_w0.4" / "config.yaml", "UNET", overrides)


def tiny_val_set() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 16, 16, generator=generator)
    return TensorDataset(images, (images > 0.5).float())


def training_flags(model: torch.nn.Module, kind: type) -> list[bool]:
    return [m.training for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("val_bn_mode", ["train", "eval"])
def test_validation_never_drops_out(val_bn_mode: str) -> None:
    cfg = tiny_config(val_bn_mode)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert any(isinstance(m, torch.nn.Dropout2d) for m in model.modules())
    seen: dict[str, list[bool]] = {"dropout": [], "batchnorm": []}
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d):
            module.register_forward_pre_hook(lambda m, _: seen["dropout"].append(m.training))
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(lambda m, _: seen["batchnorm"].append(m.training))
    val_set = tiny_val_set()
    # two copies of the same model: the BatchNorm running statistics that train mode updates
    # cannot make the second pass differ from the first
    outputs = []
    for twin in (copy.deepcopy(model), copy.deepcopy(model)):
        torch.manual_seed(len(outputs))  # Dropout, if it were on, would draw different masks
        _, rows, samples = evaluate(twin, val_set, cfg, torch.device("cpu"), isbi=False)
        outputs.append(([r["dice"] for r in rows], [s[3] for s in samples]))
    assert outputs[0][0] == outputs[1][0]
    assert all(np.array_equal(a, b) for a, b in zip(outputs[0][1], outputs[1][1], strict=True))
    assert seen["dropout"] and not any(seen["dropout"])
    assert set(seen["batchnorm"]) == {val_bn_mode == "train"}
    if val_bn_mode == "train":  # batch statistics: the running mean moved
        before = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
        after = next(m for m in twin.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_mean
        assert not torch.equal(before, after)
