"""Every relative link in the README, docs/ and benchmarks/README.md leads somewhere.

A link names a file of the repository that exists, and a ``#fragment`` names a heading of that
Markdown file (GitHub's anchors: lower case, punctuation dropped, spaces as hyphens). Text only.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..conftest import REPO

FENCE = re.compile(r"```.*?```", re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)


def pages() -> list[Path]:
    """The Markdown files whose links are checked."""
    return [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: ``Memory, and the paper's 8x`` -> ``memory-and-the-papers-8x``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of every heading of ``page`` outside code blocks."""
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def test_anchor_rule() -> None:
    assert anchor("Memory, and the paper's 8x") == "memory-and-the-papers-8x"
    assert anchor("Every mode against Normal: step, epoch, eval forward") == (
        "every-mode-against-normal-step-epoch-eval-forward")


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in pages():
        for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_no_heading_names_an_issue() -> None:
    """Headings say what a section is about, not which issue added it."""
    named = [f"{page.relative_to(REPO)}: {h}" for page in pages() for h in HEADING.findall(
        FENCE.sub("", page.read_text(encoding="utf-8"))) if re.search(r"\bissue\b|#\d+", h, re.IGNORECASE)]
    assert not named, "\n".join(named)
