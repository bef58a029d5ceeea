"""Spinal cord grey matter (SCGM challenge 2017): check a release, or write a synthetic one.

The GM trainer reads the release's NIfTI files directly (no conversion step), so this command
only checks a downloaded release or writes a synthetic stand-in in the same format::

    python preprocessing/gm_prepare.py --release /path/to/scgm_training   # check, exit 2 if unusable
    python preprocessing/gm_prepare.py --synthetic [--out data/gm] [--sites 1 2] [--slices 6]

A non-empty ``--out`` is refused unless it holds an earlier synthetic release and
``--overwrite`` is given (then only that release's files are replaced).

Errors a user can fix print one line, ``error: <message>``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unet.errors import UserError
from unet.exitcodes import ExitCode
from unet.lock import folder_lock
from unet.prep.gm import SITE_PROFILES, inspect_release, write_synthetic_release

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "gm"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``gm_prepare.py``."""
    parser = argparse.ArgumentParser(
        prog="gm_prepare.py",
        description="Check an SCGM challenge training release, or write a synthetic one.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--release", type=Path, metavar="DIR",
                      help="check a real release folder (site*-sc*-image/mask-r*.nii.gz)")
    mode.add_argument("--synthetic", action="store_true",
                      help="write a synthetic release in the same format")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                        help=f"synthetic release folder (default {DEFAULT_OUT})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier synthetic release in --out (only its files; "
                        "other files there are kept)")
    parser.add_argument("--sites", type=int, nargs="+", default=[1, 2],
                        choices=sorted(SITE_PROFILES), help="synthetic sites (default 1 2)")
    parser.add_argument("--subjects", type=int, default=10, metavar="N",
                        help="synthetic subjects per site, numbered 01..N (default 10; "
                        "01-08 train, 09-10 validation)")
    parser.add_argument("--slices", type=int, default=6, metavar="N",
                        help="synthetic axial slices per volume (>= 3, default 6)")
    parser.add_argument("--size", type=int, default=100, metavar="PX",
                        help="synthetic in-plane size in pixels at 0.5 mm (>= 40, default 100)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status (0 ok, 2 user error or unusable release)."""
    args = build_parser().parse_args(argv)
    try:
        if args.synthetic:
            with folder_lock(args.out, "output folder"):  # one preparation per output folder at a time
                out = write_synthetic_release(
                    args.out,
                    sites=args.sites,
                    subjects=range(1, args.subjects + 1),
                    n_slices=args.slices,
                    size=args.size,
                    seed=args.seed,
                    overwrite=args.overwrite,
                )
            print(f"wrote a synthetic GM release (not real data) to {out}")
            print(inspect_release(out).summary())
            return 0
        report = inspect_release(args.release)
        print(report.summary())
        if not report.usable:
            reason = report.problems[0] if report.problems else (
                "it needs training subjects 01-08 and validation subjects 09-10"
            )
            print(f"error: the GM release {args.release} is unusable: {reason}", file=sys.stderr)
            return ExitCode.USER_ERROR
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
