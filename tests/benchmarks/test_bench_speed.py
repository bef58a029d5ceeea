"""benchmarks/bench_speed.py and bench_kernels.py run as a user runs them and report every
figure with a verdict (the speed itself is their output, not a test)."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import REPO, run_command


def test_bench_speed_reports_step_epoch_and_forward_with_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = run_command(["benchmarks/bench_speed.py", "--modes", "normal,fixed_pow2,bnn", "--reps", "1",
                          "--epoch-reps", "1", "--base-channels", "4", "--size", "32", "--epoch-size", "32",
                          "--epoch-slices", "6", "--epoch-base-channels", "4", "--no-kernels", "--json", str(out)],
                         cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fused kernels: off" in result.stdout
    payload = json.loads(out.read_text())
    assert payload["kernels"].startswith("off")
    for key in ("normal", "fixed_pow2", "bnn"):
        for metric in ("step", "epoch", "forward"):
            stats = payload["modes"][key][metric]
            assert stats["wall_min_s"] > 0 and len(stats["wall_all_s"]) == 1
            assert stats["target"] in ("holds", "min only", "MISSED")
    assert payload["modes"]["normal"]["forward"]["wall_min_ratio"] == 1.0
    for title in ("training step", "one epoch through the trainer", "eval forward"):
        assert title in result.stdout


def test_bench_kernels_compares_every_rule_and_finds_the_same_values() -> None:
    result = run_command(["benchmarks/bench_kernels.py", "--shape", "1", "5", "16", "24", "--reps", "1"], cwd=REPO,
                         timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.endswith(("yes", "NO"))]
    assert len(lines) == 12 and all(line.endswith("yes") for line in lines)
    assert any(line.startswith("eval ReLU -> BatchNorm -> FIXED pow2") for line in lines)
