"""``python -m unet.predict -m RUN_DIR_or_CHECKPOINT -i INPUT -o OUTPUT_DIR [options]``.

Segments new images and volumes with a trained model: every input is transformed as the
model's training data was (the checkpoint's input-transform record), predicted slice by slice
with a sliding window of the training crop size and Gaussian blending, mapped back to its own
grid, thresholded and written under its own name (see docs/predict.md).

Exit status: 0 all done; 1 some files were skipped for an unsupported type; 2 a user error
(bad option, checkpoint or output folder; or an input that could not be predicted, named on
its own ``error:`` line while the others were still predicted); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from unet.checkpoint import deployment_warning, needs_deployment_warning
from unet.config import Config, read_yaml_section
from unet.configs import DATASETS, packaged_config
from unet.data.transforms import normalize
from unet.errors import ConfigError, DataError, UserError
from unet.exitcodes import ExitCode
from unet.fileio import atomic_write_text, check_writable_dir, remove_stale_temporaries, removed_note
from unet.input_transform import RECORD_VERSION, canonical_dataset_name, input_transform_record
from unet.lock import folder_lock
from unet.progress import bar_disable, switch_off
from unet.runtime import tune_allocator
from unet.trained import TrainedModel, checkpoint_file

from .. import imageio
from .cases import INTENSITY_OPTIONS, Case, Roi, prepare_case
from .sliding import Forward, mirror_tta, sliding_window_stream

EXIT_UNSUPPORTED = ExitCode.PARTIAL
EXIT_USER_ERROR = ExitCode.USER_ERROR
EXIT_INTERRUPTED = ExitCode.INTERRUPTED
ENGINES = ("float", "integer", "onnx", "onnx-int")
PROBABILITY_FOLDER = "probabilities"


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m unet.predict",
        description="Segment images and volumes with a trained model. INPUT is a file or a folder of PNG / TIFF "
        "images, TIFF stacks, NIfTI volumes and DICOM series folders; each mask is written to OUTPUT_DIR under "
        "its input's name (a DICOM series folder NAME/ gives NAME.nii.gz).",
    )
    parser.add_argument("-m", "--model", required=True, type=Path, metavar="RUN_DIR_or_CHECKPOINT",
                        help="a run folder (its best.pt is used) or a checkpoint file")
    parser.add_argument("-i", "--input", required=True, type=Path, metavar="INPUT", help="file or folder")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="OUTPUT_DIR",
                        help="folder of the masks (created if missing)")
    parser.add_argument("--prepared", action="store_true",
                        help="inputs are already in the training format (the PNG slices em_prepare.py / "
                        "nih_prepare.py write): no resizing, no HU windowing")
    parser.add_argument("--threshold", type=float, default=None,
                        help="mask = probability > threshold (default: the checkpoint config's threshold)")
    parser.add_argument("--probabilities", action="store_true",
                        help=f"also write the float32 probability maps to OUTPUT_DIR/{PROBABILITY_FOLDER}/")
    parser.add_argument("--step", type=float, default=0.5,
                        help="sliding-window step as a fraction of the window (default 0.5)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time mirroring: average over 4 flips (4x the time; default off)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per forward pass (default: the checkpoint's val_batch_size)")
    parser.add_argument("--bn-mode", choices=("eval", "train"), default="eval",
                        help="BatchNorm: eval = running statistics (default; a slice's mask does not depend on "
                        "its batch), train = statistics of each batch, as a recipe with val_bn_mode: train "
                        "validated")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)")
    parser.add_argument("--engine", choices=ENGINES, default="float",
                        help="float: the PyTorch model (default); integer: the bit-true integer engine (its fast "
                        "exact path: int8 GEMMs, see docs/engines.md); onnx: onnxruntime; onnx-int: the integer ONNX "
                        "(MatMulInteger, the integer engine's codes) under onnxruntime, FIXED and BNN models")
    parser.add_argument("--intensity", choices=INTENSITY_OPTIONS, default="training",
                        help="grey levels of images that are not 8-bit: training (default) applies the range the "
                        "preparation recorded (every file alike); per-file scales each file by its own min..max")
    parser.add_argument("--roi", default=None, metavar="X0:X1,Y0:Y1,Z0:Z1",
                        help="NIH: predict only inside this voxel box of the output grid (half-open index "
                        "ranges; an empty bound means the axis end, e.g. 100:400,120:380,:); 0 outside")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace masks already in OUTPUT_DIR")
    group.add_argument("--continue", dest="resume", action="store_true",
                       help="skip inputs whose outputs OUTPUT_DIR already holds")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they show only on a terminal anyway; also UNET_NO_PROGRESS=1)")
    return parser


# --------------------------------------------------------------------------- checkpoint


@dataclass
class Predictor:
    """A loaded checkpoint: model, config, dataset name and input-transform record."""

    path: Path
    model: nn.Module
    cfg: Config
    dataset: str
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    #: The whole checkpoint as read (its metrics, BatchNorm record and config).
    state: dict[str, Any] = field(default_factory=dict)


def resolve_checkpoint(path: Path) -> Path:
    """A run folder -> its ``best.pt``; a file -> itself (:func:`unet.trained.checkpoint_file`).
    DataError when neither exists."""
    path = checkpoint_file(path)
    if not path.exists():
        raise DataError(f"model {path} does not exist; give a run folder or a checkpoint (.pt)")
    return path


def checkpoint_config(state: dict[str, Any], path: Path) -> tuple[Config, str]:
    """The run config stored in ``state`` over its dataset's base defaults, and the dataset name.

    DataError when the checkpoint has no config or no known dataset (not of this project).
    """
    stored = state.get("config")
    if not isinstance(stored, dict):
        raise DataError(f"checkpoint {path} is not a checkpoint of this project (no run config in it)")
    try:
        dataset = canonical_dataset_name(state.get("dataset") or stored.get("dataset", ""))
    except DataError:
        raise DataError(f"checkpoint {path} is not a checkpoint of this project (unknown dataset "
                        f"{state.get('dataset') or stored.get('dataset')!r})") from None
    values: dict[str, Any] = {}
    if dataset in DATASETS:  # the packaged base config (unet/configs/<dataset>.yaml)
        try:
            values.update(read_yaml_section(packaged_config(dataset), "UNET"))
        except ConfigError:
            pass
    values.update(stored)
    return Config(values, {k: str(path) for k in values}), dataset


def checkpoint_record(state: dict[str, Any], cfg: Config, dataset: str, path: Path) -> tuple[dict[str, Any], list[str]]:
    """The checkpoint's input-transform record, or one rebuilt from its stored config (with a
    note saying so) for checkpoints written before the record existed."""
    record = state.get("input_transform")
    notes = []
    if record is None:
        try:
            record = input_transform_record(cfg, dataset)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"checkpoint {path} has no input_transform record and its config cannot rebuild "
                            f"one (missing {exc}); retrain it with this version") from None
        record = {**record, "rebuilt": True}
        source = record.get("source") or "no prepare.json found"
        notes.append(f"note: checkpoint {path} has no input_transform record; rebuilt from its stored config "
                     f"({source})")
    if not isinstance(record, dict) or record.get("dataset") != dataset:
        raise DataError(f"checkpoint {path} has an input_transform record that is not for {dataset}")
    if int(record.get("version", 0)) > RECORD_VERSION:
        raise DataError(f"checkpoint {path} has an input_transform record of version {record.get('version')}, "
                        f"newer than this predict command reads ({RECORD_VERSION}); update the code")
    return record, notes


def load_predictor(model_path: Path) -> Predictor:
    """Load the checkpoint with :meth:`unet.trained.TrainedModel.load`, its config being the
    stored one over the dataset's base defaults (:func:`checkpoint_config`), and check its
    input-transform record (:func:`checkpoint_record`) before the model is built."""
    path = resolve_checkpoint(model_path)
    checked: dict[str, Any] = {}

    def config_rule(state: dict[str, Any], path: Path) -> Config:
        cfg, checked["dataset"] = checkpoint_config(state, path)
        checked["record"], checked["notes"] = checkpoint_record(state, cfg, checked["dataset"], path)
        return cfg

    trained = TrainedModel.load(path, config_rule)
    return Predictor(path, trained.model, trained.config, checked["dataset"], checked["record"], checked["notes"],
                     trained.state)


# --------------------------------------------------------------------------- options


def parse_roi(text: str) -> list[tuple[int | None, int | None]]:
    """``"X0:X1,Y0:Y1,Z0:Z1"`` -> three (start, stop) pairs; an empty bound is None (the axis end)."""
    parts = text.split(",")
    if len(parts) != 3:
        raise ConfigError(f"--roi {text}: expected three index ranges X0:X1,Y0:Y1,Z0:Z1 (e.g. 100:400,120:380,:)")
    box = []
    for part in parts:
        bounds = part.split(":")
        try:
            if len(bounds) != 2:
                raise ValueError
            start, stop = (int(b) if b.strip() else None for b in bounds)
        except ValueError:
            raise ConfigError(f"--roi {text}: {part!r} is not a range START:STOP of voxel indices") from None
        if (start is not None and start < 0) or (start is not None and stop is not None and stop <= start):
            raise ConfigError(f"--roi {text}: {part!r} must satisfy 0 <= START < STOP")
        box.append((start, stop))
    return box


def select_device(text: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or None (cuda:0 when available, else the CPU)."""
    if text is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {text}: expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {text}: expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: CUDA is not available here; use --device cpu")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s)")
        device = torch.device("cuda", index)
    return device


def set_bn_mode(model: nn.Module, mode: str) -> None:
    """Everything in eval mode (Dropout off), then BatchNorm in train mode when ``mode == "train"``."""
    model.eval()
    if mode == "train":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()


def make_engine(name: str, model: nn.Module, window: tuple[int, int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable that maps a float (B, 1, H, W) tensor to probabilities: the model itself
    (float), ``unet.integer.IntegerUNet.from_model(model)`` (integer) or
    ``unet.export.onnx.OnnxForward(model, window)`` (onnx) or
    ``unet.export.onnx_int.IntegerOnnxForward(model, window)`` (onnx-int). UserError when unavailable."""
    if name == "float":
        return model
    try:
        if name == "integer":
            from unet.integer import IntegerUNet

            factory = lambda: IntegerUNet.from_model(model)  # noqa: E731
        elif name == "onnx-int":
            from unet.export.onnx_int import IntegerOnnxForward

            factory = lambda: IntegerOnnxForward(model, window)  # noqa: E731
        else:
            from unet.export.onnx import OnnxForward

            factory = lambda: OnnxForward(model, window)  # noqa: E731
    except ImportError as exc:
        raise ConfigError(f"--engine {name} is not available in this installation ({exc}); use --engine float"
                          ) from None
    try:
        return factory()
    except (ValueError, NotImplementedError, TypeError, UserError) as exc:
        raise ConfigError(f"--engine {name} cannot run this model: {exc}") from None


def make_forward(engine: Callable[[torch.Tensor], torch.Tensor], device: torch.device, tta: bool) -> Forward:
    """numpy batch (B, 1, h, w) -> numpy probabilities, through ``engine`` on ``device``."""

    def forward(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = engine(torch.from_numpy(batch).to(device))
        return out.float().cpu().numpy()

    return mirror_tta(forward) if tta else forward


# --------------------------------------------------------------------------- outputs


@dataclass
class Job:
    """One input and where its outputs go; filled in as it is predicted."""

    item: imageio.InputItem
    outputs: list[Path]
    seconds: float = 0.0
    case: Case | None = None
    probs: list[np.ndarray] = field(default_factory=list)
    error: str | None = None
    done: bool = False


def plan_jobs(items: list[imageio.InputItem], output: Path, probabilities: bool) -> list[Job]:
    """Output paths per input; ConfigError when two inputs would write one file or an output
    would replace an input."""
    jobs, seen = [], {}
    inputs = {item.path.resolve() for item in items}
    for item in items:
        outputs = [output / item.mask_name]
        if probabilities:
            outputs.append(output / PROBABILITY_FOLDER / item.probability_name)
        for out in outputs:
            key = out.resolve()
            if key in inputs or any(parent in inputs for parent in key.parents):
                raise ConfigError(f"output {out} would replace or go inside the input {item.path}; choose another "
                                  "OUTPUT_DIR (-o)")
            if key in seen:
                raise ConfigError(f"inputs {seen[key].path} and {item.path} would both write {out}; rename one")
            seen[key] = item
        jobs.append(Job(item, outputs))
    return jobs


MANIFEST = "predict.json"


def read_manifest(output: Path) -> dict[str, Any] | None:
    """``OUTPUT_DIR/predict.json`` when a predict run wrote it (a mapping with a ``files``
    list of entries with an ``input``), else None (missing, or a file of the user's)."""
    path = output / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None
    if not all(isinstance(entry, dict) and isinstance(entry.get("input"), str) for entry in manifest["files"]):
        return None
    return manifest


def check_existing(jobs: list[Job], output: Path, overwrite: bool, resume: bool) -> list[Job]:
    """The jobs to run: without --overwrite or --continue an output folder that already holds
    any of the outputs is refused (ConfigError); --continue drops the jobs whose outputs all exist.

    A ``predict.json`` there that an earlier predict wrote is kept and added to (its record of
    other inputs stays); one that no predict wrote (the user's own file) is replaced only with
    --overwrite."""
    manifest = output / MANIFEST
    if os.path.lexists(manifest) and not overwrite and read_manifest(output) is None:
        raise ConfigError(f"{manifest} exists and was not written by predict (it is not its record); pass "
                          "--overwrite to replace it, move it away, or choose another OUTPUT_DIR (-o)")
    existing = [path for job in jobs for path in job.outputs if path.exists()]
    if existing and not (overwrite or resume):
        raise ConfigError(f"output folder {output} already holds {len(existing)} of the outputs (e.g. "
                          f"{existing[0].name}); pass --overwrite to replace them or --continue to skip the inputs "
                          "already done")
    if resume:
        return [job for job in jobs if not all(path.exists() for path in job.outputs)]
    return jobs


# --------------------------------------------------------------------------- the run


def predict(args: argparse.Namespace, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """Carry out the command (parsed ``args``); return the exit status. ``out``/``err`` print a line."""
    if not 0.0 < args.step <= 1.0:
        raise ConfigError(f"--step {args.step}: must be in (0, 1] (a fraction of the window)")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.bn_mode == "train" and args.engine != "float":
        raise ConfigError(f"--bn-mode train needs --engine float (the {args.engine} engine folds BatchNorm "
                          "into running statistics)")
    roi: Roi | None = parse_roi(args.roi) if args.roi is not None else None
    device = select_device(args.device)
    if args.engine != "float" and device.type != "cpu":
        raise ConfigError(f"--engine {args.engine} runs on the CPU; drop --device {args.device}")

    items, unsupported = imageio.find_inputs(args.input)
    predictor = load_predictor(args.model)
    cfg, record = predictor.cfg, predictor.record
    if roi is not None and predictor.dataset != "NIH":
        raise ConfigError(f"--roi applies to NIH CT volumes; {predictor.path} is a {predictor.dataset} model")
    if args.prepared and predictor.dataset == "GM":
        raise ConfigError("--prepared: GM has no prepared format (the trainer reads the NIfTI release directly); "
                          "drop --prepared")
    threshold = float(cfg.threshold) if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold {threshold}: must be between 0 and 1 (exclusive)")
    batch_size = int(args.batch_size or cfg.val_batch_size)
    window = (int(record["window"][0]), int(record["window"][1]))

    jobs = plan_jobs(items, args.output, args.probabilities)
    created = not os.path.lexists(args.output)
    check_writable_dir(args.output, "output folder")  # before predicting anything, not at the first write
    try:
        with folder_lock(args.output, "output folder"):  # one predict per OUTPUT_DIR at a time
            return _predict_locked(args, out, err, jobs, unsupported, predictor, roi, device, threshold,
                                   batch_size, window)
    except UserError:
        if created:  # a refused run leaves no empty OUTPUT_DIR behind
            with contextlib.suppress(OSError):
                args.output.rmdir()
        raise


def _predict_locked(args: argparse.Namespace, out: Callable[[str], None], err: Callable[[str], None],
                    jobs: list[Job], unsupported: list[Path], predictor: Predictor, roi: Roi | None,
                    device: torch.device, threshold: float, batch_size: int, window: tuple[int, int]) -> int:
    """The part of :func:`predict` that runs while it holds OUTPUT_DIR's lock."""
    cfg, record = predictor.cfg, predictor.record
    todo = check_existing(jobs, args.output, args.overwrite, args.resume)
    removed = remove_stale_temporaries(args.output, {job.outputs[0].name for job in jobs} | {MANIFEST})
    if args.probabilities:
        removed += remove_stale_temporaries(args.output / PROBABILITY_FOLDER, {job.outputs[1].name for job in jobs})
    if removed:  # safe: this process holds OUTPUT_DIR's lock, so no other predict is writing them
        err(removed_note(removed, f"an interrupted predict left in {args.output}"))
    if args.probabilities:
        check_writable_dir(args.output / PROBABILITY_FOLDER, "probability folder")
    for note in predictor.notes:
        err(note)
    if args.bn_mode == "eval" and needs_deployment_warning(predictor.state):
        err(deployment_warning(predictor.path, predictor.state))
    special = [p for p in unsupported if not p.is_file()]
    if special:
        names = ", ".join(f"{p.name} ({imageio.special_kind(p)})" for p in special)
        err(f"warning: skipping {len(special)} entr{'y' if len(special) == 1 else 'ies'} that are not regular files "
            f"or folders: {names}")
    if len(special) < len(unsupported):
        names = ", ".join(p.name for p in unsupported if p.is_file())
        err(f"warning: skipping {len(unsupported) - len(special)} file(s) of unsupported type: {names} (supported: "
            f"{imageio.SUPPORTED})")
    skipped = len(jobs) - len(todo)
    if skipped:
        out(f"--continue: {skipped} input(s) already done in {args.output}, {len(todo)} to predict")

    model = predictor.model.to(device)
    set_bn_mode(model, args.bn_mode)
    engine = make_engine(args.engine, model, window)
    forward = make_forward(engine, device, args.tta)
    transform = None if record["normalize"] == "none" else (lambda w: normalize(w, record["normalize"]))
    args.output.mkdir(parents=True, exist_ok=True)
    trained_on = f" trained on '{record['data_name']}'" if record.get("data_name") else ""
    out(f"model: {predictor.dataset}{trained_on} {predictor.path} ({cfg.quantization}, "
        f"base_channels {cfg.base_channels}); "
        f"window {window[0]}x{window[1]}, step {args.step}, batch {batch_size}, BatchNorm {args.bn_mode}, "
        f"threshold {threshold}, engine {args.engine}{', TTA' if args.tta else ''}, device {device}")

    started = time.perf_counter()
    files_bar = tqdm(total=len(todo), desc="files", unit="file", disable=bar_disable(), position=0)
    slices_bar = tqdm(total=0, desc="slices", unit="slice", disable=bar_disable(), position=1, leave=False)

    def finalize(job: Job) -> None:
        begun = time.perf_counter()
        try:
            prob = job.case.finish(job.probs)
            job.case.write_mask(job.outputs[0], prob > threshold)
            if args.probabilities:
                job.case.write_probability(job.outputs[1], prob)
            job.done = True
        except OSError as exc:
            job.error = f"cannot write the outputs of {job.item.path}: {exc}"
            err(f"error: {job.error}")
        job.seconds += time.perf_counter() - begun
        job.case, job.probs = None, []
        files_bar.update()

    def stream() -> Iterator[tuple[tuple[int, int], np.ndarray]]:
        for index, job in enumerate(todo):
            begun = time.perf_counter()
            try:
                job.case = prepare_case(job.item, record, args.prepared, roi, args.intensity)
            except UserError as exc:
                job.error = str(exc)
                err(f"error: {job.error}")
                files_bar.update()
                continue
            finally:
                job.seconds += time.perf_counter() - begun
            for warning in job.case.warnings:
                err(warning)
            slices_bar.total += len(job.case.slices)
            slices_bar.refresh()
            if not job.case.slices:
                finalize(job)
            for k, image in enumerate(job.case.slices):
                yield (index, k), image

    def account(keys: list[tuple[int, int]], seconds: float) -> None:
        for key in keys:
            todo[key[0]].seconds += seconds / len(keys)

    try:
        for (index, _), prob in sliding_window_stream(stream(), forward, window, args.step, batch_size,
                                                      transform, account):
            job = todo[index]
            job.probs.append(prob)
            slices_bar.update()
            if len(job.probs) == len(job.case.slices):
                finalize(job)
    except KeyboardInterrupt:
        files_bar.close()
        slices_bar.close()
        written = sum(job.done for job in todo)
        err(f"interrupted: {written} of {len(todo)} input(s) written to {args.output}; no output is half-written. "
            "Rerun with --continue to finish")
        return EXIT_INTERRUPTED
    finally:
        slices_bar.close()
        files_bar.close()

    for job in todo:
        status = (f"{job.outputs[0]}" if job.done else f"FAILED ({job.error})")
        out(f"{job.item.name}: {status}  {job.seconds:.2f} s")
    failed = [job for job in todo if not job.done]
    total = time.perf_counter() - started
    out(f"predicted {len(todo) - len(failed)} input(s) in {total:.1f} s"
        + (f"; {len(failed)} failed" if failed else "") + (f"; {skipped} already done" if skipped else "")
        + (f"; {len(unsupported)} unsupported skipped" if unsupported else ""))
    _write_manifest(args, predictor, threshold, batch_size, window, str(device), todo)
    if failed:
        return EXIT_USER_ERROR
    return EXIT_UNSUPPORTED if unsupported else 0


def _write_manifest(args: argparse.Namespace, predictor: Predictor, threshold: float, batch_size: int,
                    window: tuple[int, int], device: str, jobs: list[Job]) -> None:
    """``OUTPUT_DIR/predict.json``: what produced the outputs (checkpoint, record, options, files)."""
    manifest = {
        "checkpoint": str(predictor.path.resolve()),
        "dataset": predictor.dataset,
        "input_transform": predictor.record,
        "options": {"threshold": threshold, "step": args.step, "batch_size": batch_size, "window": list(window),
                    "bn_mode": args.bn_mode, "tta": args.tta, "engine": args.engine, "device": device,
                    "prepared": args.prepared, "roi": args.roi, "probabilities": args.probabilities,
                    "intensity": args.intensity},
        "files": [{"input": str(job.item.path), "outputs": [str(p) for p in job.outputs], "ok": job.done,
                   "seconds": round(job.seconds, 3), **({"error": job.error} if job.error else {})}
                  for job in jobs],
    }
    earlier = read_manifest(args.output)
    if earlier is not None:  # keep the record of the inputs an earlier run did
        done_now = {entry["input"] for entry in manifest["files"]}
        manifest["files"] = [entry for entry in earlier["files"] if entry["input"] not in done_now] + manifest["files"]
    atomic_write_text(args.output / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and predict; user errors print one ``error:`` line and return 2."""
    tune_allocator()
    args = build_parser().parse_args(argv)
    if args.no_progress:
        switch_off()

    def out(line: str) -> None:
        tqdm.write(line, file=sys.stdout)

    def err(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    try:
        return predict(args, out, err)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted before any output was written", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["build_parser", "load_predictor", "main", "parse_roi", "predict"]
