"""The quick-start figures in the docs are the ones `python benchmarks/quickstarts.py` last measured.

The script re-runs the three quick starts exactly as the docs tell a newcomer and records the
figures in ``benchmarks/results/quickstarts.json``; a change that moves a figure must re-run it and
update the README (its "Two commands" section) and docs/usage.md (the quick-start table) in the
same commit, or this test fails.
"""

from __future__ import annotations

import json

import pytest

from ..conftest import REPO

RECORDED = json.loads((REPO / "benchmarks" / "results" / "quickstarts.json").read_text())["datasets"]
README = (REPO / "README.md").read_text(encoding="utf-8")
#: The page holding the quick-start table.
USAGE = (REPO / "docs" / "usage.md").read_text(encoding="utf-8")


def quickstart_row(dataset: str) -> list[str]:
    """The cells of the quick-start table row of ``dataset`` in docs/usage.md."""
    prefix = f"| {dataset.upper()} | `python preprocessing/{dataset}_prepare.py"
    (line,) = [line for line in USAGE.splitlines() if line.startswith(prefix)]
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.mark.parametrize("dataset", ["em", "gm", "nih"])
def test_quickstart_table_shows_the_recorded_dice(dataset: str) -> None:
    figures = RECORDED[dataset]
    dice_cell, deployed_cell = quickstart_row(dataset)[-2:]
    assert deployed_cell == f"{figures['best_eval_dice']:.2f}"
    assert dice_cell.startswith(f"{figures['best_dice']:.2f} (epoch {figures['best_epoch']} of "
                                f"{figures['num_epochs']}"), dice_cell
    if "dice_at_0.5" in figures:
        assert f"{figures['dice_at_0.5']:.2f} at 0.5" in dice_cell


def test_two_commands_section_quotes_the_em_quickstart() -> None:
    start = README.index("## Two commands")
    section = README[start:README.index("\n## ", start + 1)]
    em = RECORDED["em"]
    assert f"**{em['best_dice']:.2f}**" in section and f"{em['dice_at_0.5']:.2f} at a 0.5 threshold" in section
