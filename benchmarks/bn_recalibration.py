#!/usr/bin/env python
"""What BatchNorm recalibration changes on the quick starts, and what it costs.

For each dataset asked for (default: EM), this prepares the synthetic data with the docs'
command, trains the quick-start experiment twice from its folder, with ``bn_recalibration: false``
(the original: checkpoints hold training's moving averages) and ``true`` (the default: statistics
recomputed over the training set for each checkpoint's weights), and reports per epoch the Dice of
the recipe's validation protocol (identical in both runs: recalibration draws no random number and
changes no weight) and the eval-mode Dice of the model each run's checkpoint would deploy. It also
reports the time spent recomputing against the epoch time, and, for the best checkpoint, the
eval-mode Dice when the statistics are recomputed over the training set *with* its random
augmentation (GM's online elastic + affine; EM and NIH have none), to compare the two choices.

    python benchmarks/bn_recalibration.py                 # EM, about 3 minutes on 2 idle cores
    python benchmarks/bn_recalibration.py --only em gm    # also GM

Writes ``benchmarks/results/bn_recalibration.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bn_recalibration.json"
sys.path.insert(0, str(REPO / "benchmarks"))
from quickstarts import QUICKSTARTS, save_record  # noqa: E402 - the docs' commands, one definition


def _run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "UNET_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"error: `python {' '.join(args)}` in {cwd} failed ({done.returncode}):\n" + "\n".join(tail))


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def augmented_eval_dice(folder: Path, trainer: str, run_dir: Path, overrides: list[str]) -> float | None:
    """Eval-mode Dice of ``run_dir/best.pt`` with its statistics recomputed over the augmented
    training set (None for a recipe without online augmentation)."""
    from unet.batchnorm import recalibrate_batchnorm
    from unet.checkpoint import load_checkpoint
    from unet.config import load_config
    from unet.experiments import load_recipe
    from unet.model import build_model
    from unet.train import evaluate

    recipe = load_recipe(folder / trainer)
    cfg = load_config(recipe.base_config, folder / "config.yaml", "UNET",
                      [o for o in overrides if o != "-o"], recipe.extra_keys)
    if not cfg.augment:
        return None
    model = build_model(cfg)
    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    recalibrate_batchnorm(model, recipe.build_train(cfg), cfg.batch_size, device, augment=True, show_progress=False)
    summary, _, _ = evaluate(model, recipe.build_val(cfg), cfg, device, recipe.isbi_metrics, bn_mode="eval")
    return round(float(summary["dice"]), 2)


def measure(dataset: str, work: Path) -> dict[str, object]:
    """Both runs of one quick start; the per-epoch figures and the cost."""
    spec = QUICKSTARTS[dataset]
    data = work / "data" / dataset
    _run([*spec["prepare"], "--out", str(data)], REPO)
    folder = REPO / dataset / "quickstart"
    overrides = ["-o", f"dataset_path={data}", "-o", f"log_output_dir={work / 'runs'}"]
    runs = {}
    for flag in ("false", "true"):
        name = f"quickstart_recal_{flag}"
        _run([str(spec["trainer"]), "-f", "config.yaml", "-t", "UNET", *overrides, "-o", f"experiment_name={name}",
              "-o", f"bn_recalibration={flag}"], folder)
        runs[flag] = work / "runs" / name
    before, after = _rows(runs["false"]), _rows(runs["true"])
    protocol_same = all(b["dice"] == a["dice"] and b["train_loss"] == a["train_loss"]
                        for b, a in zip(before, after, strict=True))
    summary = json.loads((runs["true"] / "summary.json").read_text())
    epochs = [{"epoch": int(a["epoch"]), "dice": round(float(a["dice"]), 2),
               "eval_dice_moving_averages": round(float(b["eval_dice"]), 2),
               "eval_dice_recalibrated": round(float(a["eval_dice"]), 2)} for b, a in zip(before, after, strict=True)]
    seconds_on = sum(float(r["seconds"]) for r in after)
    seconds_off = sum(float(r["seconds"]) for r in before)
    return {
        "val_bn_mode": summary["val_bn_mode"],
        "protocol_identical": protocol_same,
        "epochs": epochs,
        "best_epoch": int(summary["best_epoch"]),
        "best_dice": round(float(summary["best_dice"]), 2),
        "best_eval_dice_recalibrated": round(float(summary["best_eval_dice"]), 2),
        "best_eval_dice_moving_averages": next(e["eval_dice_moving_averages"] for e in epochs
                                               if e["epoch"] == int(summary["best_epoch"])),
        "best_eval_dice_recalibrated_augmented": augmented_eval_dice(folder, str(spec["trainer"]), runs["true"],
                                                                     overrides),
        "recalibration_seconds": round(float(summary["bn_recalibration_seconds"]), 2),
        "training_seconds_with": round(seconds_on, 1),
        "training_seconds_without": round(seconds_off, 1),
        "recalibration_share_of_epoch_time": round(float(summary["bn_recalibration_seconds"]) / seconds_on, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(QUICKSTARTS), default=["em"],
                        help="datasets (default: em)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to record the figures ({RESULTS})")
    args = parser.parse_args(argv)
    recorded = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for dataset in args.only:
        with tempfile.TemporaryDirectory(prefix=f"bnrecal-{dataset}-") as tmp:
            print(f"{dataset}: two quick-start runs (bn_recalibration false, true) ...", flush=True)
            figures = measure(dataset, Path(tmp))
        recorded.setdefault("datasets", {})[dataset] = figures
        print("| epoch | Dice (protocol) | eval Dice, moving averages | eval Dice, recalibrated |")
        print("|---|---|---|---|")
        for e in figures["epochs"]:
            print(f"| {e['epoch']} | {e['dice']:.2f} | {e['eval_dice_moving_averages']:.2f} | "
                  f"{e['eval_dice_recalibrated']:.2f} |")
        print(f"protocol identical in both runs: {figures['protocol_identical']}; recalibration "
              f"{figures['recalibration_seconds']:.1f} s of {figures['training_seconds_with']:.1f} s "
              f"({100 * figures['recalibration_share_of_epoch_time']:.1f}%); with augmentation: "
              f"{figures['best_eval_dice_recalibrated_augmented']}", flush=True)
    save_record(args.json, recorded, f"torch threads {torch.get_num_threads()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
