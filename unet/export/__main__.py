"""``python -m unet.export RUN_or_CHECKPOINT [--format packed|qonnx|onnx|onnx-int] [-o OUT]``.

Loads a run folder's ``best.pt`` (or the checkpoint given), rebuilds the model its config
describes and writes it:

* ``packed`` (default): :mod:`unet.export.packed`, quantized weights bit-packed at their
  storage width (``--float16`` stores the float layers in half precision);
* ``qonnx`` / ``onnx`` / ``onnx-int``: ``unet.export.qonnx.export_qonnx`` /
  ``unet.export.onnx.export_onnx`` / ``unet.export.onnx_int.export_onnx_int``
  ``(model, path, input_hw, metadata)`` on the model in eval mode (``onnx-int``: the integer
  engine's graph, MatMulInteger and threshold tables; FIXED and BNN models only);
* ``hls4ml``: a project folder (:mod:`unet.export.hls4ml`, docs/hardware.md); ``--check IMAGES``
  compiles it and compares its C simulation with the integer engine.

Prints the file size beside the float checkpoint's and records both in ``OUT.json``.
User errors print one ``error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import DataError, UserError
from ..exitcodes import ExitCode
from ..fileio import atomic_write_text, check_writable_dir, remove_stale_temporaries, removed_note
from ..interrupts import EXIT_INTERRUPTED, terminate_as_interrupt
from ..lock import folder_lock
from ..runtime import tune_allocator
from ..trained import TrainedModel
from .packed import read_header, write_packed

FORMATS = {"packed": ".uqp", "qonnx": ".qonnx.onnx", "onnx": ".onnx", "onnx-int": ".int.onnx", "hls4ml": "_hls4ml"}


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m unet.export",
        description="Export a trained quantized U-Net: packed weights at their storage widths, QONNX, ONNX or "
                    "integer ONNX (onnx-int: MatMulInteger and integer thresholds, the integer engine's codes).")
    parser.add_argument("source", type=Path, help="a run folder (its best.pt is exported) or a checkpoint file")
    parser.add_argument("--format", choices=tuple(FORMATS), default="packed", help="output format (default packed)")
    parser.add_argument("-o", "--out", type=Path, default=None,
                        help="output file (default: beside the checkpoint, <name>.uqp / .qonnx.onnx / .onnx / "
                        ".int.onnx)")
    parser.add_argument("--float16", action="store_true",
                        help="packed: store the float layers (first block, head, biases, BatchNorm) as float16")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="qonnx/onnx/onnx-int: input height and width (default: the config's crop_size)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--io-type", default="io_parallel", help="hls4ml: io type (io_parallel)")
    parser.add_argument("--part", default=None, help="hls4ml: FPGA part for synthesis (default xcu250-figd2104-2L-e)")
    parser.add_argument("--check", type=Path, default=None, metavar="IMAGES",
                        help="hls4ml: compile (g++), run the C simulation on these images and compare every code "
                             "with the integer engine; non-zero exit when any differs")
    parser.add_argument("--layers", action="store_true", help="hls4ml --check: compare every unit, not only the last")
    return parser


def checkpoint_path(source: Path) -> Path:
    """``source/best.pt`` for a run folder, else ``source``; DataError when there is none."""
    if source.is_dir():
        path = source / "best.pt"
        if not path.is_file():
            raise DataError(f"run folder {source} has no best.pt; train it first or give a checkpoint file")
        return path
    if not source.exists():
        raise DataError(f"{source} does not exist; give a run folder or a checkpoint (.pt)")
    return source


def model_from_checkpoint(path: Path) -> tuple[Any, dict[str, Any], list[str]]:
    """Load ``path`` with :meth:`unet.trained.TrainedModel.load` (its stored config alone:
    :func:`unet.trained.stored_config`) and return the model (CPU, eval mode), the checkpoint
    state and notes for the user. A checkpoint from before ``pow2_min_exponent`` gets the
    default bound (a note says so)."""
    trained = TrainedModel.load(path)
    return trained.model, trained.state, trained.messages


def sidecar(out: Path) -> Path:
    """``OUT.json``, the record written beside an export."""
    return Path(f"{out}.json")


def written_by_export(path: Path) -> bool:
    """Whether ``path`` is an ``OUT.json`` record an export wrote (JSON with its fields)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"format", "file", "checkpoint", "file_bytes"} <= set(record)


def check_outputs(checkpoint: Path, out: Path, overwrite: bool) -> None:
    """UserError unless the export may write ``out`` and its ``OUT.json``.

    Never, with or without ``overwrite``: an output that is the checkpoint being exported
    (also through a link or another spelling of its path), or a folder. Only with
    ``overwrite``: an existing ``out``; an existing ``OUT.json`` only when an export wrote it.
    """
    source = checkpoint.resolve()
    for path in (out, sidecar(out)):
        if path.resolve() == source or (path.exists() and source.exists() and os.path.samefile(path, source)):
            raise UserError(f"output {path} is the checkpoint being exported ({checkpoint}); an export never "
                            "replaces its input: choose another -o")
        if path.is_dir():
            raise UserError(f"output {path} is a folder; give a file path with -o")
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; choose another -o or pass --overwrite")
    check_writable_dir(out.parent, "output folder")
    record = sidecar(out)
    if os.path.lexists(record):
        if not written_by_export(record):
            raise UserError(f"{record} exists and was not written by an export (the record export writes beside "
                            f"{out.name}); move it away or choose another -o")
        if not overwrite:
            raise UserError(f"{record} exists; choose another -o or pass --overwrite")


def default_out(checkpoint: Path, fmt: str) -> Path:
    """``<checkpoint folder>/<stem><ext>``, e.g. ``runs/x/best.uqp``."""
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Run the export ``args`` describe; return the record written to ``OUT.json``."""
    checkpoint = checkpoint_path(args.source)
    out = args.out if args.out is not None else default_out(checkpoint, args.format)
    if args.format == "hls4ml":  # a project folder, not a file
        from .hls4ml.cli import export_project

        return export_project(args, checkpoint, out)
    check_outputs(checkpoint, out, args.overwrite)
    with folder_lock(out, "output file"):  # one export per output at a time
        removed = remove_stale_temporaries(out.parent, {out.name, sidecar(out).name})
        if removed:
            print(removed_note(removed, f"an interrupted export left beside {out}"), file=sys.stderr)
        return _export_locked(args, checkpoint, out)


def _export_locked(args: argparse.Namespace, checkpoint: Path, out: Path) -> dict[str, Any]:
    """:func:`export` once it holds the output's lock."""
    if args.float16 and args.format != "packed":
        raise UserError("--float16 applies to --format packed only")
    model, state, notes = model_from_checkpoint(checkpoint)
    for note in notes:
        print(note, file=sys.stderr)
    metadata: dict[str, Any] = {
        "config": state["config"],
        "source": {"checkpoint": str(checkpoint), "bytes": checkpoint.stat().st_size,
                   "epoch": state.get("epoch"), "dataset": state.get("dataset")},
    }
    if "input_transform" in state:
        metadata["input_transform"] = state["input_transform"]
    record: dict[str, Any] = {"format": args.format, "file": str(out), "checkpoint": str(checkpoint),
                              "checkpoint_bytes": checkpoint.stat().st_size}
    if args.format == "packed":
        header = write_packed(model, out, metadata, float16=args.float16)
        _, start = read_header(out)
        record.update(payload_bytes=header["payload_bytes"], header_bytes=start,
                      float32_bytes=header["float32_bytes"])
    else:
        exporter = _exporter(args.format)
        size = args.input_size or state["config"].get("crop_size")
        if not size or len(size) != 2:
            raise UserError("give --input-size H W (the checkpoint's config has no crop_size)")
        exporter(model.eval(), out, (int(size[0]), int(size[1])), metadata)
    record["file_bytes"] = out.stat().st_size
    record["ratio_to_checkpoint"] = record["checkpoint_bytes"] / record["file_bytes"]
    atomic_write_text(sidecar(out), json.dumps(record, indent=2) + "\n")
    return record


def _exporter(fmt: str):
    """``export_qonnx`` / ``export_onnx`` / ``export_onnx_int`` from their module, imported only
    when asked for."""
    fmt = fmt.replace("-", "_")
    module_name = f"unet.export.{fmt}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UserError(f"--format {fmt} is not available in this checkout ({module_name} is missing)") from None
        raise UserError(f"--format {fmt} needs the Python package '{exc.name}': pip install -r requirements.txt"
                        ) from None
    return getattr(module, f"export_{fmt}")


def describe(record: dict[str, Any]) -> str:
    """The summary lines printed after an export."""
    lines = [f"wrote {record['file']}: {record['file_bytes']:,} bytes ({record['format']})"]
    if record["format"] == "packed":
        lines.append(f"  tensors {record['payload_bytes']:,} bytes + header {record['header_bytes']:,} bytes; "
                     f"the same tensors in float32: {record['float32_bytes']:,} bytes "
                     f"({record['float32_bytes'] / record['payload_bytes']:.2f}x the packed tensors)")
    lines.append(f"  float checkpoint {record['checkpoint']}: {record['checkpoint_bytes']:,} bytes "
                 f"({record['ratio_to_checkpoint']:.2f}x this file); sizes recorded in {record['file']}.json")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, export, print the sizes; 2 with one ``error:`` line on a user error."""
    tune_allocator()
    args = build_parser().parse_args(argv)
    try:
        with terminate_as_interrupt():
            record = export(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the output is written whole or not at all
        print("interrupted; nothing was exported (no output is ever half-written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(describe(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
