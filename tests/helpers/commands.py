"""The repository root and a runner for the project's commands, as a user would type them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: The repository (worktree) the tests run against.
REPO = Path(__file__).resolve().parents[2]


def run_command(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python *args`` in ``cwd`` the way a user would; capture its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )
