#!/usr/bin/env python
"""Re-run the three quick starts exactly as the docs tell a newcomer, and record their figures.

For each dataset (EM, GM, NIH) this prepares the synthetic data with the docs' preparation
command (into a temporary folder), trains the quick-start experiment from its folder with the
docs' trainer command (``-o dataset_path=...`` and ``-o log_output_dir=...`` point at the
temporary folder; neither changes what is trained), and for EM also evaluates the best model at a
0.5 threshold. It prints the quick-start table rows (docs/usage.md) and writes
``benchmarks/results/quickstarts.json``, which ``tests/docs/test_readme_figures.py`` compares with the
README and docs/usage.md, so a change that moves a figure shows up in review.

Runs are seeded and deterministic on the CPU: two runs give identical metrics. The times depend
on the machine and its load and are recorded for information only.

    python benchmarks/quickstarts.py                  # all three, about 10-15 minutes on 2 idle cores
    python benchmarks/quickstarts.py --only em        # one dataset
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "quickstarts.json"

#: What the README and docs/usage.md tell a newcomer to run, per dataset: the preparation arguments and the trainer.
QUICKSTARTS: dict[str, dict[str, object]] = {
    "em": {"prepare": ["preprocessing/em_prepare.py", "--synthetic", "--augment-copies", "3"],
           "trainer": "em_unet.py", "threshold_05": True},
    "gm": {"prepare": ["preprocessing/gm_prepare.py", "--synthetic"], "trainer": "gm_unet.py",
           "threshold_05": False},
    "nih": {"prepare": ["preprocessing/nih_prepare.py", "--synthetic"], "trainer": "nih_unet.py",
            "threshold_05": False},
}


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "UNET_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"error: `python {' '.join(args)}` in {cwd} failed ({done.returncode}):\n" + "\n".join(tail))


def measure(dataset: str, work: Path) -> dict[str, object]:
    """Prepare, train and (EM) evaluate one quick start; return its figures."""
    spec = QUICKSTARTS[dataset]
    data = work / "data" / dataset
    started = time.perf_counter()
    _run([*spec["prepare"], "--out", str(data)], REPO)
    prepared = time.perf_counter()
    folder = REPO / dataset / "quickstart"
    overrides = ["-o", f"dataset_path={data}", "-o", f"log_output_dir={work / 'runs'}"]
    _run([str(spec["trainer"]), "-f", "config.yaml", "-t", "UNET", *overrides], folder)
    trained = time.perf_counter()
    run_dir = work / "runs" / "quickstart"
    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    result: dict[str, object] = {
        "best_dice": round(float(summary["best_dice"]), 2),
        "best_epoch": int(summary["best_epoch"]),
        "num_epochs": len(rows),
        "final_dice": round(float(rows[-1]["dice"]), 2),
        "best_eval_dice": round(float(summary["best_eval_dice"]), 2),
        "bn_recalibration_seconds": round(float(summary["bn_recalibration_seconds"]), 1),
        "prepare_seconds": round(prepared - started, 1),
        "train_seconds": round(trained - prepared, 1),
    }
    if spec["threshold_05"]:
        _run([str(spec["trainer"]), "-f", "config.yaml", "-t", "UNET", *overrides,
              "-o", "operation_mode=inference", "-o", "threshold=0.5"], folder)
        metrics = sorted([*run_dir.rglob("inference*metrics*.json"), *run_dir.glob("inference/*_t0.5_*/metrics.json")],
                         key=lambda p: p.stat().st_mtime)
        result["dice_at_0.5"] = round(float(json.loads(metrics[-1].read_text())["dice"]), 2)
    return result


def table_row(dataset: str, figures: dict[str, object]) -> str:
    """The quick-start table's Dice cells (docs/usage.md) for ``dataset`` (protocol, deployed) and the training time."""
    cell = f"{figures['best_dice']:.2f} (epoch {figures['best_epoch']} of {figures['num_epochs']}"
    cell += f"; {figures['dice_at_0.5']:.2f} at 0.5)" if "dice_at_0.5" in figures else ")"
    return f"| {dataset.upper()} | {cell} | {figures['best_eval_dice']:.2f} | {figures['train_seconds']:.0f} s |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(QUICKSTARTS), default=list(QUICKSTARTS),
                        help="datasets to run (default: all three)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to record the figures ({RESULTS})")
    args = parser.parse_args(argv)
    recorded = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for dataset in args.only:
        with tempfile.TemporaryDirectory(prefix=f"quickstart-{dataset}-") as tmp:
            print(f"{dataset}: preparing and training the quick start ...", flush=True)
            figures = measure(dataset, Path(tmp))
        recorded.setdefault("datasets", {})[dataset] = figures
        print(table_row(dataset, figures), flush=True)
    save_record(args.json, recorded, "torch threads default")
    return 0


def save_record(path: Path, recorded: dict[str, object], threads: str) -> None:
    """Write ``recorded`` with the machine (architecture, CPU count, ``threads``) and today's date."""
    recorded["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, {threads}"
    recorded["date"] = time.strftime("%Y-%m-%d")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
