"""The ``[project.scripts]`` entry points: each names a callable that answers ``--help``."""

from __future__ import annotations

import importlib

import pytest

from ..conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_the_commands_have_entry_points() -> None:
    assert {"unet-predict", "unet-export", "unet-sweep", "unet-results", "unet-new-experiment"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_entry_point_is_importable_and_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module_name, _, attribute = SCRIPTS[name].partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    assert callable(target)
    with pytest.raises(SystemExit) as stopped:
        target(["--help"])
    assert stopped.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_the_exit_status_table_in_the_docs_is_the_enum() -> None:
    import re

    from unet.exitcodes import ExitCode

    text = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    section = text.split("## Exit statuses", 1)[1]
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", section, flags=re.MULTILINE)
    assert rows == [(str(int(code)), code.name) for code in ExitCode]
    assert int(ExitCode.INTERRUPTED) == 130 and int(ExitCode.USER_ERROR) == 2
