"""Every ``SPEC §n`` citation in the repository names a section of docs/SPEC.md.

The code cites the reproduction reference as ``SPEC §3``, ``SPEC §5.4`` or ``SPEC §5, §6`` (one
``SPEC`` followed by a comma-separated list). A cited number must be the number of a heading of
docs/SPEC.md (``## §3 Quantizers``, ``### §5.4 Operation modes``). Text only, no model runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..conftest import REPO

SPEC = REPO / "docs" / "SPEC.md"
#: Folders whose ``.py`` files are scanned, besides every ``*_BASE`` folder.
SOURCE_DIRS = ("quantizer", "unet", "tests", "benchmarks", "preprocessing")
#: Other files that cite the reference (the READMEs and the base configs' comments).
EXTRA_FILES = ("README.md", "benchmarks/README.md",
               "EM_BASE/config.yaml", "GM_BASE/config.yaml", "NIH_BASE/config.yaml")

NUMBER = r"§(\d+(?:\.\d+)*)"
#: ``SPEC §5`` or ``SPEC §5, §6`` or ``SPEC §5 and §5.4``: the whole list after one ``SPEC``.
CITATION = re.compile(rf"\bSPEC\s+{NUMBER}((?:\s*(?:,|and|/)\s*{NUMBER})*)")
#: A Markdown heading that starts with a section number: ``## §5.4 Operation modes``.
HEADING = re.compile(rf"^#{{1,6}}\s+{NUMBER}(?=[\s.:]|$)", re.MULTILINE)


def scanned_files() -> list[Path]:
    """The repository files whose citations must resolve."""
    folders = [REPO / name for name in SOURCE_DIRS] + sorted(REPO.glob("*_BASE"))
    files = [path for folder in folders for path in sorted(folder.rglob("*.py"))]
    files += [REPO / name for name in EXTRA_FILES if (REPO / name).is_file()]
    files += [page for page in sorted((REPO / "docs").glob("*.md")) if page != SPEC]
    return files


def citations(text: str) -> list[tuple[int, str]]:
    """``(line number, section number)`` of every number cited after ``SPEC`` in ``text``."""
    found = []
    for match in CITATION.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append((line, match.group(1)))
        found.extend((line, number) for number in re.findall(NUMBER, match.group(2)))
    return found


def spec_sections() -> list[str]:
    """The section numbers of docs/SPEC.md's headings, in order."""
    return HEADING.findall(SPEC.read_text(encoding="utf-8"))


def all_citations() -> list[tuple[str, int, str]]:
    """``(file relative to the repository, line, section)`` for every citation found."""
    return [
        (str(path.relative_to(REPO)), line, number)
        for path in scanned_files()
        for line, number in citations(path.read_text(encoding="utf-8"))
    ]


def test_citation_pattern() -> None:
    text = "see SPEC §3.\n(SPEC §5, §6) and SPEC §5.4; SPEC §2 and §9; not §7 alone"
    assert citations(text) == [(1, "3"), (2, "5"), (2, "6"), (2, "5.4"), (2, "2"), (2, "9")]


def test_the_spec_exists_with_every_top_level_section() -> None:
    assert SPEC.is_file(), "docs/SPEC.md is missing"
    sections = spec_sections()
    assert [s for s in sections if "." not in s] == [str(n) for n in range(10)]
    assert len(sections) == len(set(sections)), f"a section number is used twice: {sections}"


def test_subsections_sit_under_their_section() -> None:
    sections = spec_sections()
    for number in sections:
        if "." in number:
            parent = number.rsplit(".", 1)[0]
            assert parent in sections and sections.index(parent) < sections.index(number), number


def test_the_scan_sees_the_citations() -> None:
    """Guards the scan itself: a few citations known to be in the code are found."""
    found = {(path, number) for path, _, number in all_citations()}
    known = [("quantizer/functional.py", "3"), ("unet/train/evaluation.py", "5.4"), ("unet/model.py", "4"),
             ("tests/train/test_losses_metrics_schedules.py", "6"), ("GM_BASE/gm_unet.py", "5")]
    for expected in known:
        assert expected in found, f"{expected} not found: the citation scan is broken"
    assert len(found) >= 20


def spec_cross_references() -> list[tuple[str, int, str]]:
    """``("docs/SPEC.md", line, section)`` for every ``§n`` the SPEC itself mentions ("see §5.4")."""
    text = SPEC.read_text(encoding="utf-8")
    return [("docs/SPEC.md", text.count("\n", 0, m.start()) + 1, m.group(1)) for m in re.finditer(NUMBER, text)]


@pytest.mark.parametrize("source", ["code", "docs/SPEC.md"])
def test_every_citation_names_a_spec_section(source: str) -> None:
    sections = set(spec_sections())
    cited = all_citations() if source == "code" else spec_cross_references()
    missing = [f"{path}:{line}: §{number}" for path, line, number in cited if number not in sections]
    assert not missing, "citations of sections docs/SPEC.md does not have:\n" + "\n".join(missing)
