"""Experiment discovery shared by the sweep and the results (SPEC §1).

An experiment folder holds a ``config.yaml`` and a ``*_unet.py`` link to its trainer. An
:class:`Experiment` is resolved by naming its dataset from the trainer link (``em_unet.py`` -> EM,
:data:`unet.recipes.RECIPES`) and loading its config (the base config beside the trainer file,
then the experiment's, then the ``-o`` overrides); its run folder is
``log_output_dir/experiment_name``. A run folder holding ``summary.json`` is finished; one
holding ``last.pt`` without it is an interrupted run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import COMMON_KEYS, Config, load_config, parse_override
from .errors import ConfigError, UserError
from .recipe import Recipe
from .recipes import recipe_for_trainer


@dataclass
class Experiment:
    """One experiment folder: ``config.yaml`` plus the link to its trainer.

    ``group`` is the name of the folder the sweep was given (``em``); ``cfg`` is the resolved
    config (None when it does not load, ``config_error`` then says why).
    """

    folder: Path
    trainer: Path
    group: str
    cfg: Config | None = None
    config_error: str | None = None
    recipe: Recipe | None = None

    @property
    def name(self) -> str:
        """The experiment folder's name (``a6.0_w0.4``)."""
        return self.folder.name

    @property
    def label(self) -> str:
        """``group/name``, as shown in progress and summaries."""
        return f"{self.group}/{self.name}"

    @property
    def run_dir(self) -> Path | None:
        """``log_output_dir/experiment_name`` as the config resolves it (None without a config)."""
        if self.cfg is None:
            return None
        return Path(self.cfg.log_output_dir) / self.cfg.experiment_name


# --- finding experiments -------------------------------------------------------------------


def is_experiment_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``config.yaml`` and a ``*_unet.py`` trainer (link or file)."""
    return (folder / "config.yaml").is_file() and any(p.is_file() for p in folder.glob("*_unet.py"))


def find_experiments(folder: Path) -> list[Experiment]:
    """The experiment folders directly under ``folder`` (or ``folder`` itself), by name.

    Raises :class:`UserError` when ``folder`` does not exist or holds no experiment.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    group = folder.resolve().name
    candidates = [folder] if is_experiment_folder(folder) else sorted(p for p in folder.iterdir() if p.is_dir())
    found = []
    for candidate in candidates:
        if is_experiment_folder(candidate):
            trainer = sorted(p for p in candidate.glob("*_unet.py") if p.is_file())[0]
            found.append(Experiment(folder=candidate, trainer=trainer, group=group))
    if not found:
        raise UserError(f"no experiments in {folder}: expected sub-folders holding config.yaml and a *_unet.py "
                        "trainer link (like em/a6.0_w0.4)")
    return found


def load_recipe(trainer: Path) -> Recipe:
    """The recipe a trainer link runs, identified by the link's name (``em_unet.py`` -> EM) and
    taken from :data:`unet.recipes.RECIPES`, over the ``config.yaml`` beside the trainer file
    the link resolves to (the base config the trainer itself reads). Nothing is imported from the
    trainer script."""
    return recipe_for_trainer(trainer)


def absolute_overrides(overrides: Sequence[str], recipe: Any = None) -> list[str]:
    """``-o key=value`` with relative path values made absolute against the working directory.

    The trainer runs from the experiment folder, so ``-o log_output_dir=runs_cpu`` given to the
    sweep must mean the folder beside the user, not one inside every experiment.
    """
    keys = {k.name: k for k in (*COMMON_KEYS, *(getattr(recipe, "extra_keys", ()) or ()))}
    out = []
    for text in overrides:
        key, value = parse_override(text)
        spec = keys.get(key)
        if spec is not None and spec.kind == "path" and isinstance(value, str) and value:
            path = Path(value).expanduser()
            if not path.is_absolute():
                text = f"{key}={(Path.cwd() / path).resolve()}"
        out.append(text)
    return out


def resolve(experiment: Experiment, overrides: Sequence[str]) -> Experiment:
    """Load the experiment's recipe and config (with ``overrides``) in place; a config that
    does not load is kept with its error, so the trainer reports it when it runs."""
    try:
        experiment.recipe = load_recipe(experiment.trainer)
    except UserError as exc:
        experiment.cfg, experiment.config_error = None, str(exc)
        return experiment
    try:
        experiment.cfg = load_config(experiment.recipe.base_config, experiment.folder / "config.yaml", "UNET",
                                     absolute_overrides(overrides, experiment.recipe),
                                     experiment.recipe.extra_keys)
    except ConfigError as exc:
        experiment.cfg, experiment.config_error = None, str(exc)
    return experiment


def collect(folders: Sequence[Path], overrides: Sequence[str] = (), only: Sequence[str] = ()) -> list[Experiment]:
    """Every experiment under ``folders``, resolved with ``overrides``, filtered by ``only``
    (experiment folder names). Two experiments that would write the same run folder are an error."""
    experiments = [e for folder in folders for e in find_experiments(Path(folder))]
    if only:
        unknown = sorted(set(only) - {e.name for e in experiments})
        if unknown:
            names = ", ".join(sorted({e.name for e in experiments}))
            raise UserError(f"--only: no experiment named {', '.join(unknown)} (found: {names})")
        experiments = [e for e in experiments if e.name in only]
    for experiment in experiments:
        resolve(experiment, overrides)
    seen: dict[Path, Experiment] = {}
    for experiment in experiments:
        run_dir = experiment.run_dir
        if run_dir is None:
            continue
        if run_dir.resolve() in seen:
            other = seen[run_dir.resolve()]
            raise UserError(f"{other.label} and {experiment.label} would both write {run_dir}; give each "
                            "dataset folder its own log_output_dir (sweep them one at a time)")
        seen[run_dir.resolve()] = experiment
    return experiments


# --- order ---------------------------------------------------------------------------------


def paper_order_key(cfg: Config | dict[str, Any] | None, name: str) -> tuple:
    """Sort key of the paper's table: full precision, FIXED by decreasing weight then
    activation bits (sign-magnitude ``1 + i + f``), INT likewise, BNN, Ternary; ties by name.
    A config that does not load comes first (it fails fast)."""
    if cfg is None:
        return (-1, 0, 0, name)
    mode = str(cfg["quantization"]).lower()
    rank = {"normal": 0, "fixed": 1, "int": 2, "bnn": 3, "ternary": 4}.get(mode, 5)
    if mode == "fixed":
        w = 1 + cfg["weight_i_width"] + cfg["weight_f_width"]
        a = 1 + cfg["activation_i_width"] + cfg["activation_f_width"]
    elif mode == "int":
        w, a = cfg["weight_i_width"] + 1, cfg["activation_i_width"] + 1
    else:
        w = a = 0
    return (rank, -w, -a, name)


# --- state of a run folder -----------------------------------------------------------------


def is_finished(run_dir: Path | None) -> bool:
    """A run folder holds a finished run when its ``summary.json`` exists."""
    return run_dir is not None and (run_dir / "summary.json").is_file()


def holds_partial_run(run_dir: Path | None) -> bool:
    """An interrupted run: ``last.pt`` and no ``summary.json``."""
    return run_dir is not None and (run_dir / "last.pt").is_file() and not is_finished(run_dir)
