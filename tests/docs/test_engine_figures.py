"""The engine speeds in docs/engines.md and the README are the ones `benchmarks/bench_integer.py` recorded.

docs/engines.md names the record its table comes from; every time in that table (minimum /
median seconds per call, the ratios to PyTorch's float forward and the integer ONNX over the
float ONNX) and the README's engine table (minimum seconds, EM slice) must read as that JSON
gives them, rounded to two decimals, so a change that moves a speed re-runs the benchmark and
updates both pages in the same commit.
"""

from __future__ import annotations

import json
import re

import pytest

from ..conftest import REPO

ENGINES_PAGE = (REPO / "docs" / "engines.md").read_text(encoding="utf-8")
README = (REPO / "README.md").read_text(encoding="utf-8")
RECORD_NAME = re.search(r"record\s+`(benchmarks/results/[^`]+\.json)`\): the EM recipe's model", ENGINES_PAGE)
#: Table columns of docs/engines.md after the model and input, as the record names the engines.
COLUMNS = ("pytorch_float", "integer", "onnx_float", "onnx_int")
ROWS = {("fixed_pow2", "em"): "| FIXED pow2 Q6.0 / Q0.4 (EM headline) | EM 512 x 512 |",
        ("fixed_pow2", "ct"): "| FIXED pow2 Q6.0 / Q0.4 | CT 16 x 192 x 192 |",
        ("fixed_saturate", "em"): "| FIXED nearest saturate Q6.0 / Q0.4 | EM 512 x 512 |",
        ("fixed_saturate", "ct"): "| FIXED nearest saturate Q6.0 / Q0.4 | CT 16 x 192 x 192 |"}


def record() -> dict:
    assert RECORD_NAME, "docs/engines.md no longer names the record of its speed table"
    return json.loads((REPO / RECORD_NAME.group(1)).read_text())


def cells(prefix: str) -> list[str]:
    """The cells after ``prefix`` of the one docs/engines.md table row that starts with it."""
    (line,) = [line for line in ENGINES_PAGE.splitlines() if line.startswith(prefix)]
    return [cell.strip() for cell in line[len(prefix):].strip().strip("|").split("|")]


@pytest.mark.parametrize(("mode", "case"), list(ROWS))
def test_engines_table_reads_as_its_record(mode: str, case: str) -> None:
    engines = record()["modes"][mode]["inputs"][case]["engines"]
    wall = {name: engines[name]["wall_s"] for name in COLUMNS}
    row = cells(ROWS[mode, case])
    float_s = wall["pytorch_float"]
    for name, cell in zip(COLUMNS, row, strict=False):
        times = f"{wall[name]['min']:.2f} / {wall[name]['median']:.2f} s"
        assert cell.startswith(times), (mode, case, name, cell, times)
        if name != "pytorch_float":
            relative = f"({wall[name]['min'] / float_s['min']:.2f}x / {wall[name]['median'] / float_s['median']:.2f}x)"
            assert relative in cell, (mode, case, name, cell, relative)
    onnx_ratio = (f"{wall['onnx_int']['min'] / wall['onnx_float']['min']:.2f}x / "
                  f"{wall['onnx_int']['median'] / wall['onnx_float']['median']:.2f}x")
    assert row[len(COLUMNS)] == onnx_ratio, (mode, case, row[-1], onnx_ratio)


def test_readme_engine_table_quotes_the_em_minimums() -> None:
    modes = record()["modes"]
    readme_engine = {"integer": "integer", "float": "pytorch_float", "onnx-int": "onnx_int", "onnx": "onnx_float"}
    for shown, name in readme_engine.items():
        (line,) = [line for line in README.splitlines() if line.startswith(f"| `{shown}`")]
        row = [cell.strip() for cell in line.strip().strip("|").split("|")]
        for column, mode in ((2, "fixed_pow2"), (3, "fixed_saturate")):
            seconds = modes[mode]["inputs"]["em"]["engines"][name]["wall_s"]["min"]
            assert row[column] == f"{seconds:.2f} s", (shown, mode, row[column])
