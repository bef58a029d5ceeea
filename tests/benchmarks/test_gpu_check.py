"""benchmarks/gpu_check.py, the one command for a CUDA machine: its CPU dry run and its no-CUDA answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ..conftest import REPO, run_command


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_without_cuda_every_check_is_skipped_and_the_exit_status_is_0() -> None:
    result = run_command(["benchmarks/gpu_check.py"], cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "no CUDA device" in lines[0]
    assert len(lines) == 5 and all(line.startswith("skipped ") for line in lines[1:])


@pytest.mark.slow
def test_cpu_dry_run_passes_every_check_of_one_mode(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    result = run_command(["benchmarks/gpu_check.py", "--cpu", "--modes", "fixed", "--json", str(out)], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["checks"]
    names = [r["check"].split()[0] for r in rows if r["status"] == "ok"]
    assert names.count("train") == 2 and names.count("step") == 4  # 32 and bf16; Normal is the step reference
    assert any(r["check"].startswith("torchrun 2 process") and "backend gloo" in r["detail"] for r in rows)
    assert any(r["check"] == "interrupt and resume" and r["status"] == "ok" for r in rows)
    assert not [r for r in rows if r["status"] == "FAIL"]


def test_unknown_mode_is_a_one_line_error() -> None:
    result = run_command(["benchmarks/gpu_check.py", "--modes", "fixed,float16"], cwd=REPO)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: --modes")
