"""``python -m unet.export RUN --format hls4ml -o DIR ...``: the project folder's side of the CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from ...errors import UserError
from ...lock import folder_lock


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export_project(args: argparse.Namespace, checkpoint: Path, out: Path) -> dict[str, Any]:
    """Check the output folder (an existing one only with ``--overwrite`` and only when an
    hls4ml export wrote it), export, and return the record written to ``DIR.json``."""
    from ...fileio import atomic_write_text
    from ...trained import TrainedModel
    from . import DEFAULT_PART, export_hls4ml
    from .build import IO_TYPES
    from .check import CheckFailed

    if args.float16:
        raise UserError("--float16 applies to --format packed only")
    if args.io_type not in IO_TYPES:
        raise UserError(f"--io-type {args.io_type} is not supported by this exporter's custom layers (they are "
                        f"written for {', '.join(IO_TYPES)})")
    if out.exists():
        if not out.is_dir() or not (out / "export.json").is_file():
            raise UserError(f"{out} exists and is not an hls4ml project written by this export; choose another -o")
        if not args.overwrite:
            raise UserError(f"{out} exists; choose another -o or pass --overwrite")
    if out.resolve() == checkpoint.resolve().parent or checkpoint.resolve().is_relative_to(out.resolve()):
        raise UserError(f"output {out} holds the checkpoint being exported; choose another -o")
    record_path = out.parent / (out.name + ".json")  # the record every export writes beside its output
    with folder_lock(record_path, "output folder"):
        trained = TrainedModel.load(checkpoint)
        model, state = trained.model, trained.state
        for note in trained.messages:
            print(note)
        size = args.input_size or state["config"].get("crop_size")
        if not size or len(size) != 2:
            raise UserError("give --input-size H W (the checkpoint's config has no crop_size)")
        metadata = {"config": state["config"], "source": {"checkpoint": str(checkpoint), "epoch": state.get("epoch")}}
        # written beside and moved into place whole: an interrupted export leaves no half project
        partial = out.parent / f".{out.name}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        failed: CheckFailed | None = None
        try:
            summary = export_hls4ml(model.eval(), partial, (int(size[0]), int(size[1])), metadata, args.io_type,
                                    args.part or DEFAULT_PART, args.check, args.layers)
        except CheckFailed as exc:  # the project is complete; its C simulation differs
            failed = exc
            summary = json.loads((partial / "export.json").read_text(encoding="utf-8"))
            summary.pop("metadata", None)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
        config = out / "hls4ml_config.yml"  # hls4ml records the folder it wrote to
        if config.is_file():
            config.write_text(config.read_text(encoding="utf-8").replace(str(partial), str(out)), encoding="utf-8")
        record = {"format": "hls4ml", "file": str(out), "checkpoint": str(checkpoint),
                  "checkpoint_bytes": checkpoint.stat().st_size, "file_bytes": _folder_bytes(out), **summary}
        record["ratio_to_checkpoint"] = record["checkpoint_bytes"] / record["file_bytes"]
        atomic_write_text(record_path, json.dumps(record, indent=2, default=str) + "\n")
    if failed is not None:
        raise failed
    if "check" in summary:
        c = summary["check"]
        print(f"C simulation equals the integer engine: {c['codes']:,} codes of {c['images']} images "
              f"(compile {summary['compile_seconds']} s)")
    return record
