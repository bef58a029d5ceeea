"""Exactness of every deployment engine on models trained through the real trainer.

For every mode of :data:`unet.exactness.MODES` this trains a small EM model with the real
trainer (``EM_BASE/em_unet.py`` on the synthetic EM data of ``preprocessing/em_prepare.py
--synthetic``, the quick-start config with ``-o`` overrides), loads its ``best.pt`` the way
``unet.predict`` does and compares with the PyTorch model, on the validation images and on
adversarial inputs (the images x1000, uniform noise, a constant 0.5 image, a zero image):

* ``packed``: the model written with ``write_packed`` and read back with ``read_packed``;
* ``onnx``: onnxruntime on the plain ONNX export (``--format onnx``, ``predict --engine onnx``);
* ``integer``: ``unet.integer.IntegerUNet`` (``predict --engine integer``);
* ``predict-onnx`` / ``predict-integer``: the whole ``python -m unet.predict`` command (windows,
  blending, writing) with that engine against ``--engine float``, on the first validation slice.

Per engine and input: pixels of the 0.5 and 0.999 masks that differ, the largest probability
difference, and (ONNX, integer, packed) activation codes that differ per layer, with the part
float rounding does not explain (:class:`unet.exactness.EngineComparison`). Prints a table and
writes JSON (default ``benchmarks/results/exactness.json``).

    python benchmarks/exactness.py                   # base_channels 8, 2 epochs, every mode
    python benchmarks/exactness.py --modes pow2_q6.0_q0.4 int8 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet.exactness import ENGINES, MODES, adversarial_inputs, compare_engine, mask_counts, rate  # noqa: E402


def prepare(data: Path, slices: int, size: int, resize: int) -> None:
    """Synthetic EM slices with the real preparation command (no crop: whole validation slices)."""
    if (data / "prepare.json").is_file():
        return
    subprocess.run([sys.executable, str(REPO / "preprocessing" / "em_prepare.py"), "--synthetic",
                    "--synthetic-slices", str(slices), "--synthetic-size", str(size), "--resize", str(resize),
                    "--crop", "0", "--out", str(data)], check=True, capture_output=True, text=True)


def train(root: Path, mode: str, data: Path, args: argparse.Namespace) -> Path:
    """Train ``mode`` with the real EM trainer; returns the run folder."""
    folder = root / mode
    run_dir = folder / "runs" / mode
    if (run_dir / "best.pt").is_file():
        return run_dir
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "em" / "quickstart" / "config.yaml", folder / "config.yaml")
    link = folder / "em_unet.py"
    if not link.exists():
        link.symlink_to(REPO / "EM_BASE" / "em_unet.py")
    overrides = [f"base_channels={args.base_channels}", f"num_epochs={args.epochs}", f"dataset_path={data}",
                 f"crop_size=[{args.crop},{args.crop}]", "batch_size=4", "val_batch_size=2", "overlay_every=1000",
                 f"experiment_name={mode}", *MODES[mode][1]]
    command = [sys.executable, "em_unet.py", "-f", "config.yaml", "-t", "UNET"]
    for item in overrides:
        command += ["-o", item]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"training {mode} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return run_dir


def validation_images(data: Path) -> torch.Tensor:
    """The prepared validation slices as the EM trainer reads them (uint8 / 255), (N, 1, H, W)."""
    from PIL import Image

    paths = sorted((data / "val" / "images").glob("*.png"))
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255.0)[None] for p in paths])


def predict_runs(run_dir: Path, data: Path, out: Path) -> dict[str, dict]:
    """``python -m unet.predict`` (in this process) with each engine on the first validation
    slice (whole-slice windows, blending, writing); the integer and onnx probability maps
    against the float engine's."""
    from unet.predict.cli import main as predict_main

    source = out / "input"
    source.mkdir(parents=True, exist_ok=True)
    first = sorted((data / "val" / "images").glob("*.png"))[0]
    shutil.copy(first, source / first.name)
    maps: dict[str, dict[str, np.ndarray]] = {}
    for engine in ("float", "integer", "onnx"):
        target = out / engine
        status = predict_main(["-m", str(run_dir), "-i", str(source), "-o", str(target),
                               "--prepared", "--probabilities", "--engine", engine, "--overwrite", "--no-progress"])
        if status != 0:
            maps[engine] = {}
            continue
        import tifffile

        maps[engine] = {p.name: tifffile.imread(p) for p in sorted((target / "probabilities").glob("*"))}
    rows = {}
    for engine in ("integer", "onnx"):
        if not maps.get(engine) or not maps.get("float"):
            rows[f"predict-{engine}"] = {"engine": f"predict-{engine}", "error": "the predict command failed"}
            continue
        ref = torch.from_numpy(np.stack([maps["float"][k] for k in sorted(maps["float"])]))
        got = torch.from_numpy(np.stack([maps[engine][k] for k in sorted(maps["float"])]))
        flips, diff, equal = mask_counts(ref, got)
        rows[f"predict-{engine}"] = {"engine": f"predict-{engine}", "pixels": ref.numel(), "mask_flips": flips,
                                     "max_prob_diff": diff, "bit_equal": equal, "codes": 0, "code_flips": 0,
                                     "layer_flips": {}, "first_flip": None, "unexplained": 0, "error": None}
    return rows


def measure(run_dir: Path, data: Path, scratch: Path, with_predict: bool, engines: list[str]) -> dict:
    """Each of ``engines`` on every input for the model of ``run_dir`` (its best.pt, loaded as predict does)."""
    from unet.predict.cli import load_predictor

    model = load_predictor(run_dir).model.eval()
    inputs = adversarial_inputs(validation_images(data))
    out: dict[str, dict] = {}
    for name, x in inputs.items():
        out[name] = {engine: compare_engine(model, engine, x).as_dict() for engine in engines}
    if with_predict:
        out["validation"].update(predict_runs(run_dir, data, scratch / run_dir.name))
    return out


def cell(row: dict) -> str:
    """``flips@0.5 / flips@0.999 (max diff)`` or a short reason."""
    if row.get("error"):
        return "not run"
    f = row["mask_flips"]
    diff = "=" if row["bit_equal"] else f"{row['max_prob_diff']:.2g}"
    codes = f" c{row['code_flips']}" if row.get("code_flips") else ""
    return f"{f['0.5']}/{f['0.999']} ({diff}){codes}"


ENGINE_COLUMNS = ("packed", "integer", "onnx", "predict-integer", "predict-onnx")


def summary_cell(per_input: dict, engine: str) -> str:
    """Pixels of the 0.5 mask that differ over every input (rate), the 0.999 mask's count, the
    largest probability difference and the inputs with flips; '0 (bit-equal)' when all are."""
    rows = [(name, row[engine]) for name, row in per_input.items() if engine in row]
    if not rows:
        return "-"
    if any(r.get("error") for _, r in rows):
        return "not run: " + "; ".join(f"{n}" for n, r in rows if r.get("error"))
    pixels = sum(r["pixels"] for _, r in rows)
    half = sum(r["mask_flips"]["0.5"] for _, r in rows)
    high = sum(r["mask_flips"]["0.999"] for _, r in rows)
    if all(r["bit_equal"] for _, r in rows):
        return "0 (bit-equal)"
    diff = max(r["max_prob_diff"] for _, r in rows)
    flagged = [n for n, r in rows if r["mask_flips"]["0.5"] or r["mask_flips"]["0.999"]]
    where = "" if engine.startswith("predict") else "every input" if len(flagged) == len(rows) else ", ".join(flagged)
    codes = sum(r.get("code_flips", 0) for _, r in rows)
    text = f"{half} ({100 * rate(half, pixels):.2g}%) / {high}; max {diff:.2g}"
    if codes:
        text += f"; {codes:,} codes"
    return text + (f" [{where}]" if where else "")


def summary_table(results: dict) -> str:
    """The table of docs/exactness.md ("Exactness on trained models"): per mode and engine, summed
    over the inputs."""
    lines = ["| mode | " + " | ".join(ENGINE_COLUMNS) + " |", "|---" * (len(ENGINE_COLUMNS) + 1) + "|"]
    for mode, per_input in results.items():
        label = MODES[mode][0] if mode in MODES else mode
        lines.append(f"| {label} | " + " | ".join(summary_cell(per_input, e) for e in ENGINE_COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slices", type=int, default=10, help="synthetic slices (a fifth are validation)")
    parser.add_argument("--size", type=int, default=256, help="synthetic slice size before --resize")
    parser.add_argument("--resize", type=int, default=200, help="prepared slice size (a multiple of 8)")
    parser.add_argument("--crop", type=int, default=96, help="training crop")
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs (default: a temporary one)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--no-predict", action="store_true", help="skip the predict-command rows")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "exactness.json")
    parser.add_argument("--summarize", type=Path, default=None, help="print the summary of an earlier JSON")
    args = parser.parse_args()
    if args.summarize is not None:
        print(summary_table(json.loads(args.summarize.read_text())["results"]))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="exactness-"))
    data = work / "data"
    prepare(data, args.slices, args.size, args.resize)
    started = time.time()
    results: dict[str, dict] = {}

    def save(complete: bool) -> None:
        """The JSON so far (after every mode, so that an interrupted run keeps what it measured)."""
        record = {
            "what": "engines against the PyTorch model (eval mode, channels_last, best.pt loaded as unet.predict "
                    "does); predict-* rows: the predict command on the first validation slice",
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
                         "work": str(work)},
            "machine": {"platform": platform.platform(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
            "complete": complete,
            "seconds": round(time.time() - started, 1),
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")

    for mode in args.modes:
        t0 = time.perf_counter()
        run_dir = train(work / "runs", mode, data, args)
        trained = time.perf_counter() - t0
        results[mode] = measure(run_dir, data, work / "predict", not args.no_predict, args.engines)
        print(f"{mode}: trained in {trained:.0f}s, measured in {time.perf_counter() - t0 - trained:.0f}s", flush=True)
        save(False)

    inputs = list(next(iter(results.values())))
    print("\nmask pixels differing at 0.5 / 0.999 (max |p - p_model|; '=' bit-equal), c: activation codes differing")
    for engine in ENGINE_COLUMNS:
        print(f"\n{engine}")
        print("| mode | " + " | ".join(inputs) + " |")
        print("|---" * (len(inputs) + 1) + "|")
        for mode, per_input in results.items():
            cells = [cell(per_input[i][engine]) if engine in per_input[i] else "" for i in inputs]
            print(f"| {mode} | " + " | ".join(cells) + " |")
    print("\nsummary: 0.5-mask pixels differing over all inputs (rate) / 0.999-mask pixels; max |p - p_model|; "
          "activation codes differing; [inputs with flips]")
    print(summary_table(results))
    save(True)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
