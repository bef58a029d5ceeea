"""The package layout: the layer rules of the tree and no import cycles.

The import graph, its rooms and floors and the rules are those of ``benchmarks/import_graph.py``
(the script that measures them); every import statement is read with ``ast``, also those inside
functions: a lazy import hides a cycle or a wrong-way arrow from Python, not from a reader.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ..conftest import REPO


@pytest.fixture(scope="module")
def layout():
    spec = importlib.util.spec_from_file_location("import_graph", REPO / "benchmarks" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graph(layout):
    return layout.import_graph(REPO)


def test_no_import_cycle_in_the_packages(layout, graph) -> None:
    assert "unet.config" in graph and "quantizer.modules" in graph
    assert "unet.errors" in graph["unet.model"]  # the parser sees relative imports (`from .errors import`)
    cycle = layout.find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_quantizer_imports_nothing_of_unet(graph) -> None:
    wrong = sorted((m, t) for m, ts in graph.items() if m.startswith("quantizer") for t in ts if t.startswith("unet"))
    assert wrong == []


def test_no_import_breaks_a_layer_rule(layout, graph) -> None:
    """The training wing imports nothing of predict, export or the experiments; predict, export
    and the integer engine import nothing of the training wing."""
    assert layout.room_of("unet.train.loop") == "train" and layout.room_of("unet.predict.cli") == "predict"
    assert layout.forbidden_imports(graph) == []


def test_no_module_is_over_600_lines(layout) -> None:
    assert layout.MAX_LINES == 600
    assert layout.long_modules(REPO) == {}


def test_no_arrow_runs_back_up_a_floor(layout, graph) -> None:
    assert layout.upward_arrows(graph) == []


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_is_found_also_through_a_lazy_relative_import(layout, tmp_path: Path) -> None:
    _tree(tmp_path, {"unet/__init__.py": "", "unet/a.py": "from .sub import b\n", "unet/sub/__init__.py": "",
                     "unet/sub/b.py": "import os\n\n\ndef f():\n    from ..c import x\n",
                     "unet/c.py": "from unet import a\n"})
    graph = layout.import_graph(tmp_path, ("unet",))
    assert graph["unet.a"] == {"unet.sub.b"}
    assert layout.find_cycle(graph) == ["unet.a", "unet.sub.b", "unet.c", "unet.a"]
    (tmp_path / "unet" / "c.py").write_text("import os\n")
    assert layout.find_cycle(layout.import_graph(tmp_path, ("unet",))) is None


def test_a_lazy_import_of_the_wrong_wing_breaks_the_rules(layout, tmp_path: Path) -> None:
    _tree(tmp_path, {"unet/__init__.py": "", "unet/train/__init__.py": "", "unet/export/__init__.py": "",
                     "unet/export/packed.py": "", "unet/model.py": "",
                     "unet/train/loop.py": "from ..model import x\n\n\ndef f():\n    from ..export.packed import y\n"})
    graph = layout.import_graph(tmp_path, ("unet",))
    assert layout.forbidden_imports(graph) == [("unet.train.loop", "unet.export.packed")]
    assert layout.upward_arrows(graph) == []  # export and train share a floor: the rule, not the floor, forbids it
    (tmp_path / "unet" / "model.py").write_text("from .train import loop\n")
    assert layout.upward_arrows(layout.import_graph(tmp_path, ("unet",))) == [("unet.model", "unet.train.loop")]


def test_a_long_module_is_named(layout, tmp_path: Path) -> None:
    _tree(tmp_path, {"unet/__init__.py": "", "unet/big.py": "x = 1\n" * 601, "unet/ok.py": "x = 1\n" * 600,
                     "quantizer/__init__.py": ""})
    assert layout.long_modules(tmp_path) == {"unet.big": 601}
