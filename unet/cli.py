"""Command line shared by the trainers: ``python em_unet.py -f config.yaml -t UNET [-o key=value]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_config
from .distributed import env_world
from .errors import MissingDataError, UserError
from .exitcodes import ExitCode
from .interrupts import EXIT_INTERRUPTED, Interrupted
from .invocation import Invocation, prepare_hint, python_word, trainer_script
from .progress import switch_off
from .recipe import Recipe
from .runtime import tune_allocator
from .train import run


def build_parser(recipe: Recipe, prog: str) -> argparse.ArgumentParser:
    """The trainer's argument parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=f"Train or evaluate the quantized U-Net on {recipe.name} data. The experiment config is "
        f"read over the dataset defaults in {recipe.base_config}.",
    )
    parser.add_argument("-f", "--config", required=True, type=Path, help="experiment YAML file")
    parser.add_argument("-t", "--top-key", default="UNET", help="top key of the YAML to read (default UNET)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable; the value is read as YAML)")
    parser.add_argument("--new-run", action="store_true",
                        help="if the run folder already holds a run, start a numbered new one beside it")
    parser.add_argument("--overwrite-trained-model", action="store_true",
                        help="normal mode: replace an existing trained_model file that another run (or no run) "
                        "wrote with this run's best model")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they show only on a terminal anyway; also UNET_NO_PROGRESS=1); "
                        "the log lines and train.log are the same")
    return parser


def invocation_of(args: argparse.Namespace, argv: list[str], recipe: Recipe) -> Invocation:
    """The command line as typed, from the parsed ``args`` and the raw ``argv``."""
    flags = [flag for flag, on in (("--new-run", args.new_run),
                                   ("--overwrite-trained-model", args.overwrite_trained_model),
                                   ("--no-progress", args.no_progress)) if on]
    return Invocation(cwd=str(Path.cwd()), python=python_word(),
                      script=trainer_script(recipe.base_config.resolve().parent), config=str(args.config),
                      top_key=args.top_key, overrides=tuple(args.override), flags=tuple(flags), argv=tuple(argv))


def main(recipe: Recipe, argv: list[str] | None = None) -> int:
    """Parse ``argv``, load and validate the config, run it; return the exit status.

    Problems in the user's input print one line ``error: ...`` on stderr and return 2 (under
    torchrun rank 0 prints it: every rank checks the same input).
    """
    tune_allocator()
    prog = Path(sys.argv[0]).name
    args = build_parser(recipe, prog).parse_args(argv)
    if args.no_progress:
        switch_off()
    cfg = None
    try:
        cfg = load_config(recipe.base_config, args.config, args.top_key, args.override, recipe.extra_keys)
        return run(cfg, recipe, script=prog, new_run=args.new_run,
                   overwrite_trained_model=args.overwrite_trained_model,
                   invocation=invocation_of(args, sys.argv[1:] if argv is None else argv, recipe))
    except MissingDataError as exc:
        if env_world().is_main:
            repo = recipe.base_config.resolve().parent.parent
            hint = prepare_hint(recipe.prepare_command, repo, cfg.dataset_path if cfg is not None else None,
                                repo / "data" / recipe.name.lower())
            print(f"error: {exc}; prepare it with: {hint}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except UserError as exc:
        if env_world().is_main:
            print(f"error: {exc}", file=sys.stderr)
        return ExitCode.USER_ERROR
    except Interrupted as exc:
        if env_world().is_main:
            print(str(exc), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM while reading the config, before the run folder
        if env_world().is_main:
            print("interrupted during start-up, before the first epoch; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED


def train(dataset: str, trainer_file: str | Path, argv: list[str] | None = None) -> int:
    """What a trainer script (``EM_BASE/em_unet.py``) runs: :func:`main` with ``dataset``'s recipe
    over the ``config.yaml`` beside ``trainer_file`` (links followed); the exit status."""
    from .recipes import RECIPES, recipe_for_trainer

    if dataset not in RECIPES:
        print(f"error: no recipe for dataset {dataset!r} (known: {', '.join(RECIPES)})", file=sys.stderr)
        return ExitCode.USER_ERROR
    return main(recipe_for_trainer(trainer_file, dataset), argv)
