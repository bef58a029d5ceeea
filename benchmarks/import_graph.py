#!/usr/bin/env python
"""The packages' import graph, grouped into rooms and floors, and the layer rules it must keep.

Every import statement of ``unet`` and ``quantizer`` is read with ``ast``, also those inside
functions (a lazy import hides a cycle from Python, not from a reader). Modules are grouped into
*rooms* (:data:`ROOMS`, by dotted prefix; any other ``unet`` module is ``core``); rooms stand on
*floors* (:data:`FLOORS`: 0 the quantizer, up to 5 the experiments). Printed:

- rooms: modules and lines per room, the largest module;
- arrows: room -> room import counts (module pairs);
- arrows running back up: imports from a room to a room on a higher floor;
- cycles: one module-level import cycle, if any;
- rule breaks: imports that :data:`FORBIDDEN` rules out, and modules over :data:`MAX_LINES`.

Run from the repository root (``--root`` measures another checkout, ``--json`` writes the figures)::

    python benchmarks/import_graph.py
    python benchmarks/import_graph.py --root /tmp/old-checkout --json before.json

``tests/docs/test_layout.py`` asserts the rules with the same functions.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("unet", "quantizer")

#: Dotted-prefix -> room; the longest matching prefix wins; other ``unet`` modules are ``core``.
ROOMS = {
    "quantizer": "quantizer",
    "unet.data": "data",
    "unet.prep": "data",
    "unet.recipes": "train",
    "unet.recipe": "train",
    "unet.train": "train",
    "unet.engine": "train",  # the training wing as one module, before unet/train/ (older checkouts)
    "unet.cli": "train",
    "unet.batchnorm": "train",
    "unet.distributed": "train",
    "unet.schedules": "train",
    "unet.precision": "train",
    "unet.integer": "integer",
    "unet.export": "export",
    "unet.exactness": "export",
    "unet.predict": "predict",
    "unet.experiments": "experiments",
    "unet.sweep": "experiments",
    "unet.launchers": "experiments",
    "unet.results": "experiments",
    "unet.new_experiment": "experiments",
}
#: Room -> floor: a room may import rooms on its own floor or below.
FLOORS = {"quantizer": 0, "core": 1, "data": 2, "integer": 2, "train": 3, "export": 3, "predict": 4,
          "experiments": 5}
#: Room -> rooms it must not import (the layer rules of the tree).
FORBIDDEN = {
    "quantizer": {room for room in FLOORS if room != "quantizer"},
    "train": {"predict", "export", "experiments"},
    "predict": {"train"},
    "export": {"train"},
    "integer": {"train"},
}
#: No module of the packages is longer than this (lines).
MAX_LINES = 600


def module_files(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file for every ``.py`` file under ``root/<package>`` (a package is
    named by its ``__init__.py``)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports anywhere in its body.

    ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module, else ``pkg``;
    ``import a.b.c`` counts as the deepest known module of the dotted path.
    """
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports."""
    modules = module_files(root, packages)
    known = set(modules)
    return {name: imported_modules(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def room_of(module: str) -> str:
    """The room of a dotted module name: the longest prefix of :data:`ROOMS` that matches
    (whole dotted components), else ``core`` (``unet`` itself included)."""
    best = ""
    for prefix in ROOMS:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return ROOMS[best] if best else "core"


def arrows(graph: dict[str, set[str]]) -> Counter:
    """(room, room) -> number of module-to-module imports between two different rooms."""
    counts: Counter = Counter()
    for module, targets in graph.items():
        for target in targets:
            if room_of(module) != room_of(target):
                counts[(room_of(module), room_of(target))] += 1
    return counts


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Module imports that run from a room to a room on a higher floor, sorted."""
    return sorted((m, t) for m, ts in graph.items() for t in ts if FLOORS[room_of(t)] > FLOORS[room_of(m)])


def forbidden_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Module imports that :data:`FORBIDDEN` rules out, sorted."""
    return sorted((m, t) for m, ts in graph.items() for t in ts if room_of(t) in FORBIDDEN.get(room_of(m), ()))


def long_modules(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """Module -> line count, for modules longer than ``limit`` lines."""
    sizes = {name: len(path.read_text().splitlines()) for name, path in module_files(root).items()}
    return {name: n for name, n in sorted(sizes.items()) if n > limit}


def measure(root: Path) -> dict:
    """Every figure the script prints, as a JSON-able dict."""
    graph = import_graph(root)
    files = module_files(root)
    rooms: dict[str, dict] = {}
    for name, path in files.items():
        lines = len(path.read_text().splitlines())
        room = rooms.setdefault(room_of(name), {"modules": 0, "lines": 0, "largest": ["", 0]})
        room["modules"] += 1
        room["lines"] += lines
        if lines > room["largest"][1]:
            room["largest"] = [name, lines]
    cycle = find_cycle(graph)
    return {
        "modules": len(files),
        "rooms": {r: rooms[r] for r in sorted(rooms, key=lambda r: (FLOORS[r], r))},
        "floors": {r: FLOORS[r] for r in sorted(rooms, key=lambda r: (FLOORS[r], r))},
        "arrows": {f"{a} -> {b}": n for (a, b), n in sorted(arrows(graph).items())},
        "module_imports": sum(len(t) for t in graph.values()),
        "upward_arrows": [f"{m} -> {t}" for m, t in upward_arrows(graph)],
        "cycle": cycle,
        "forbidden": [f"{m} -> {t}" for m, t in forbidden_imports(graph)],
        "over_max_lines": long_modules(root),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures of the checkout at ``--root``; exit 1 when a layer rule is broken."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO, help="checkout to measure (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = measure(args.root)
    print(f"{figures['modules']} modules, {figures['module_imports']} module imports")
    print("rooms (floor: room, modules, lines, largest module):")
    for room, info in figures["rooms"].items():
        print(f"  {FLOORS[room]}: {room:<12} {info['modules']:>3} {info['lines']:>6}  {info['largest'][0]} "
              f"({info['largest'][1]})")
    print(f"arrows between rooms ({len(figures['arrows'])}):")
    for arrow, n in figures["arrows"].items():
        print(f"  {arrow}: {n}")
    print(f"arrows running back up ({len(figures['upward_arrows'])}):")
    for arrow in figures["upward_arrows"]:
        print(f"  {arrow}")
    print("cycle: " + (" -> ".join(figures["cycle"]) if figures["cycle"] else "none"))
    print(f"forbidden imports ({len(figures['forbidden'])}): " + ", ".join(figures["forbidden"]))
    print(f"modules over {MAX_LINES} lines: " + (", ".join(f"{m} ({n})" for m, n in
                                                        figures["over_max_lines"].items()) or "none"))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    broken = figures["cycle"] or figures["forbidden"] or figures["over_max_lines"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
