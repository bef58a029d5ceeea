"""Prepare NIH Pancreas-CT (or a synthetic stand-in) as the PNG pairs the NIH trainer reads.

Examples::

    python preprocessing/nih_prepare.py --images Pancreas-CT --labels TCIA_pancreas_labels-02-05-2017
    python preprocessing/nih_prepare.py --synthetic            # writes data/nih from fake CTs

The real release: CT volumes as one DICOM folder per case (``PANCREAS_0001/...``, as the
TCIA download lays them out) or NIfTI files (``PANCREAS_0001.nii.gz``), and the labels
``label0001.nii.gz``. See :mod:`unet.prep.nih` for what is done to them. A non-empty output
folder is refused unless it holds an earlier preparation and ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet.errors import UserError
from unet.exitcodes import ExitCode
from unet.fileio import PAIRS, check_output_dir
from unet.lock import folder_lock
from unet.prep.nih import DEFAULT_SIZE, DEFAULT_WINDOW, prepare_nih, write_synthetic_nih

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "nih"


def _case_list(text: str) -> list[int]:
    try:
        numbers = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated case numbers such as 1,2, got {text!r}") from None
    if not numbers:
        raise argparse.ArgumentTypeError("no case number given")
    return numbers


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="nih_prepare.py",
        description="NIH Pancreas-CT -> 112x176 PNG pairs of axial pancreas slices "
        "(train/val folders plus prepare.json).",
    )
    parser.add_argument("--images", type=Path, help="folder of CT volumes (NIfTI or DICOM folders)")
    parser.add_argument("--labels", type=Path, help="folder of label0001.nii.gz files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--name", help="the data set's name, recorded in prepare.json and shown in messages and "
                        "results (default: the --images folder's name; 'synthetic CT stand-in' with --synthetic); "
                        "a name without the word 'pancreas' also drops the check that labels cover pancreas-like HU")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier preparation in --out (only its files; other files there are kept)",
    )
    parser.add_argument(
        "--split",
        choices=("patient", "slice"),
        default="patient",
        help="hold out whole patients (default) or random slices (the original's split)",
    )
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of cases (or slices) held out (default 0.2)"
    )
    parser.add_argument(
        "--val-cases",
        type=_case_list,
        default=None,
        metavar="N,N",
        help="explicit validation case numbers, e.g. 1,2 (patient split)",
    )
    parser.add_argument(
        "--hu-window",
        type=float,
        nargs=2,
        default=list(DEFAULT_WINDOW),
        metavar=("LO", "HI"),
        help="HU clip window before per-slice scaling (default 0 255, the original's)",
    )
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs=2,
        default=list(DEFAULT_SIZE),
        metavar=("H", "W"),
        help="output slice size (default 112 176)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    parser.add_argument(
        "--synthetic", action="store_true", help="write synthetic CTs into <out>-synthetic-source and prepare them"
    )
    parser.add_argument("--synthetic-cases", type=int, default=6, help="number of synthetic cases (default 6)")
    parser.add_argument(
        "--synthetic-shape",
        type=int,
        nargs=3,
        default=[192, 192, 40],
        metavar=("X", "Y", "Z"),
        help="synthetic volume size (default 192 192 40)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with folder_lock(args.out, "output folder"):  # one preparation per output folder at a time
            report = _prepare(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    for name, reason in report.skipped:
        print(f"warning: skipped {name}: {reason}", file=sys.stderr)
    for note in report.warnings:
        print(f"warning: {note}", file=sys.stderr)
    print(report.summary())
    print(f"wrote {report.out_dir}")
    return 0


def _prepare(args: argparse.Namespace) -> Any:
    """Write the synthetic source when asked, then prepare; returns :func:`prepare_nih`'s report."""
    out = args.out.resolve()
    if args.synthetic:
        if args.images or args.labels:
            raise UserError("--synthetic writes its own CT volumes; drop --images/--labels")
        source = out.with_name(f"{out.name}-synthetic-source")
        check_output_dir(out, PAIRS, args.overwrite)  # before writing the source, not after
        write_synthetic_nih(
            source,
            n_cases=args.synthetic_cases,
            shape=tuple(args.synthetic_shape),
            seed=args.seed,
            overwrite=args.overwrite,
        )
        print(f"wrote synthetic NIH volumes to {source}")
        images, labels = source / "images", source / "labels"
    else:
        if args.images is None or args.labels is None:
            raise UserError("give --images and --labels (or --synthetic)")
        images, labels = args.images, args.labels
    return prepare_nih(
        images,
        labels,
        out,
        split=args.split,
        val_fraction=args.val_fraction,
        val_cases=args.val_cases,
        window=tuple(args.hu_window),
        size=tuple(args.crop_size),
        seed=args.seed,
        progress=not args.no_progress,
        overwrite=args.overwrite,
        name=args.name or ("synthetic pancreas CT stand-in" if args.synthetic else None),
    )


if __name__ == "__main__":
    sys.exit(main())
