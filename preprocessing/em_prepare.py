"""Prepare EM-style 2-D data for the EM trainer: the ISBI 2012 release, your own stacks or
image/mask folders, or a synthetic stand-in.

Examples::

    python preprocessing/em_prepare.py --volume train-volume.tif --labels train-labels.tif
    python preprocessing/em_prepare.py --synthetic
    python preprocessing/em_prepare.py --pairs-images imgs/ --pairs-masks masks/ --crop 200

The output folder (default ``<repo>/data/em``) holds ``train/`` and ``val/`` PNG pairs and
``prepare.json``; see :mod:`unet.prep.em` for what is done to each slice. A non-empty output
folder is refused unless it holds an earlier preparation and ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from unet.errors import ConfigError, UserError
from unet.exitcodes import ExitCode
from unet.fileio import PAIRS, SYNTHETIC_SOURCE, atomic_directory, check_output_dir
from unet.lock import folder_lock
from unet.prep.em import (
    INTENSITY_OPTIONS,
    describe_intensity,
    is_isbi_release,
    parse_index_list,
    prepare_em,
    prepare_em_from_pairs,
    read_tiff_stack,
    synthetic_em_stack,
    write_tiff_stack,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "em"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see ``--help``)."""
    p = argparse.ArgumentParser(
        description="Turn 2-D images and their masks (TIFF stacks such as the ISBI 2012 release, folders of "
        "image/mask pairs, or a synthetic stand-in) into the train/val PNG-pair folder the EM trainer reads.",
    )
    src = p.add_argument_group("input (choose one)")
    src.add_argument("--volume", type=Path, help="TIFF stack of N images (N x H x W), e.g. train-volume.tif")
    src.add_argument("--labels", type=Path, help="its labels, the same shape: 0 background, 255 (or 1) foreground "
                     "(ISBI 2012 train-labels.tif: 255 cell interior, 0 membrane)")
    src.add_argument(
        "--synthetic",
        action="store_true",
        help="draw a synthetic EM-like stack into <out>-synthetic-source/ and prepare it",
    )
    src.add_argument("--pairs-images", type=Path,
                     help="folder of 2-D images, PNG or TIFF of any bit depth (paired with the masks by file stem)")
    src.add_argument("--pairs-masks", type=Path, help="folder of their masks, PNG or TIFF (0/255 or 0/1; "
                     "instance labels with --binarize)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder ({DEFAULT_OUT})")
    p.add_argument(
        "--name",
        help="the data set's name, recorded in prepare.json and shown in messages and results (default: "
        "'ISBI 2012 EM segmentation' for that release, 'synthetic EM stand-in', else the source file's name)",
    )
    p.add_argument(
        "--binarize",
        action="store_true",
        help="labels are instance labels (one value per object, 0 background): every label > 0 is foreground",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier preparation in --out (only its files; other files there are kept)",
    )
    p.add_argument(
        "--val-slices",
        help="validation slice indices, e.g. 24-29 or 0,5,10 (default: the last fifth, 24-29 of 30)",
    )
    p.add_argument("--val-names", help="PNG-pair input: comma-separated validation file stems")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="PNG-pair input without --val-names: last fraction of names (sorted) used for val",
    )
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resize slices to RESIZE x RESIZE (default 256 for stacks, none for PNG pairs; "
        "0 = keep the size)",
    )
    p.add_argument("--crop", type=int, default=200, help="centre crop size (0 = none; 200)")
    p.add_argument(
        "--intensity",
        choices=INTENSITY_OPTIONS,
        default="auto",
        help="grey levels of images that are not 8-bit: auto scales every file by one range, the min..max of "
        "all the data (recorded in prepare.json; predict applies it to new files); per-file scales each file "
        "by its own min..max (8-bit images are always used as they are)",
    )
    p.add_argument(
        "--intensity-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="scale every file from LO..HI to 0..255 (clipped), e.g. 0 4095 for 12-bit data",
    )
    p.add_argument(
        "--augment-copies",
        type=int,
        default=0,
        help="extra augmented copies per training slice (flips, quarter turns, small rotations)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation and synthetic data")
    p.add_argument("--synthetic-slices", type=int, default=30, help="synthetic stack depth (30)")
    p.add_argument("--synthetic-size", type=int, default=512, help="synthetic slice size (512)")
    return p


def _optional_size(value: int | None, default: int | None, option: str) -> int | None:
    if value is None:
        return default
    if value < 0:
        raise ConfigError(f"{option} must be >= 0, got {value}")
    return value or None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the preparation chosen by ``args``; return the manifest written to ``prepare.json``."""
    stack_mode = args.volume is not None or args.labels is not None
    pairs_mode = args.pairs_images is not None or args.pairs_masks is not None
    modes = sum([stack_mode, pairs_mode, bool(args.synthetic)])
    if modes != 1:
        raise ConfigError(
            "give exactly one input: --volume and --labels, --pairs-images and --pairs-masks, "
            "or --synthetic"
        )
    if args.augment_copies < 0:
        raise ConfigError(f"--augment-copies must be >= 0, got {args.augment_copies}")
    crop = _optional_size(args.crop, 200, "--crop")
    out = args.out.resolve()
    val = None if args.val_slices is None else parse_index_list(args.val_slices)

    if pairs_mode:
        if args.pairs_images is None or args.pairs_masks is None:
            raise ConfigError("--pairs-images and --pairs-masks go together; give both")
        if args.val_slices is not None:
            raise ConfigError("--val-slices applies to TIFF stacks; use --val-names for PNG pairs")
        val_names = None
        if args.val_names:
            val_names = [n.strip() for n in args.val_names.split(",") if n.strip()]
        return prepare_em_from_pairs(
            args.pairs_images,
            args.pairs_masks,
            out,
            val_names=val_names,
            val_fraction=args.val_fraction,
            crop=crop,
            resize=_optional_size(args.resize, None, "--resize"),
            augment_copies=args.augment_copies,
            seed=args.seed,
            overwrite=args.overwrite,
            intensity=args.intensity,
            intensity_range=args.intensity_range,
            binarize=args.binarize,
            name=args.name,
        )

    if not args.synthetic:  # the inputs first: a mistyped path is named before anything about the output
        if args.volume is None or args.labels is None:
            raise ConfigError("--volume and --labels go together; give both")
        volume_path, labels_path = args.volume.resolve(), args.labels.resolve()
        volume, labels = read_tiff_stack(volume_path), read_tiff_stack(labels_path)
    check_output_dir(out, PAIRS, args.overwrite)  # before minutes of work, not after
    if args.synthetic:
        if args.synthetic_slices < 2 or args.synthetic_size < 16:
            raise ConfigError("--synthetic-slices must be >= 2 and --synthetic-size >= 16")
        source = out.with_name(f"{out.name}-synthetic-source")
        check_output_dir(source, SYNTHETIC_SOURCE, args.overwrite)
        volume_path, labels_path = source / "train-volume.tif", source / "train-labels.tif"
        volume, labels = synthetic_em_stack(args.synthetic_slices, args.synthetic_size, args.seed)
        with atomic_directory(source, SYNTHETIC_SOURCE, overwrite=args.overwrite) as tmp:
            write_tiff_stack(tmp / volume_path.name, volume)
            write_tiff_stack(tmp / labels_path.name, labels)
        print(f"wrote synthetic stacks {volume_path} and {labels_path}")
        volume, labels = read_tiff_stack(volume_path), read_tiff_stack(labels_path)
    origin = "synthetic" if args.synthetic else "isbi2012" if is_isbi_release(volume_path, volume) else "user"
    return prepare_em(
        volume,
        labels,
        out,
        val_slices=val,
        resize=_optional_size(args.resize, 256, "--resize"),
        crop=crop,
        augment_copies=args.augment_copies,
        seed=args.seed,
        source={"volume": str(volume_path), "labels": str(labels_path)},
        overwrite=args.overwrite,
        intensity=args.intensity,
        intensity_range=args.intensity_range,
        name=args.name,
        origin=origin,
        binarize=args.binarize,
    )


def summary(info: dict[str, Any], out: Path) -> str:
    """A few lines describing the prepared folder: pairs and foreground fraction per split."""
    name = info.get("name", info["dataset"])
    shown = name if info.get("origin") in ("isbi2012", "synthetic") else f"'{name}' (--name sets it)"
    lines = [f"prepared {shown} in {out}"]
    for split in ("train", "val"):
        if "val_slices" in info:
            which = info[f"{split}_slices"]
            detail = f"{len(which)} slices ({_ranges(which)})"
        else:
            detail = f"{len(info[f'{split}_names'])} pairs"
        lines.append(
            f"  {split:5s}: {detail}, {info['pairs'][split]} PNG pairs, "
            f"foreground {100 * info['foreground_fraction'][split]:.1f}%"
        )
    if "intensity_scaling" in info:
        lines.append(f"  {describe_intensity(info)}")
    lines.append(f"  image size {_image_size(info)}; details in prepare.json")
    return "\n".join(lines)


def _image_size(info: dict[str, Any]) -> str:
    """``200x200`` (the crop, else the resize), or the input sizes of uncropped pairs."""
    if info.get("image_size"):
        return "x".join(str(v) for v in info["image_size"])
    side = info.get("crop") or info.get("resize")
    if side:
        return f"{side}x{side}"
    return ", ".join("x".join(str(v) for v in size) for size in info.get("input_sizes") or []) or "?"


def _ranges(indices: list[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for i in indices + [None]:
        if start is not None and (i is None or i != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if i is not None and start is None:
            start = i
        prev = i
    return ",".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, prepare the data, print a summary; return the exit status (2 on UserError)."""
    args = build_parser().parse_args(argv)
    try:
        with folder_lock(args.out, "output folder"):  # one preparation per output folder at a time
            info = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    for warning in info.get("warnings") or []:
        print(warning, file=sys.stderr)
    print(summary(info, args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
