"""The training wing: the engine shared by the EM, GM and NIH trainers (SPEC §5, §5.4).

A trainer supplies a :class:`unet.recipe.Recipe` (its base config and dataset builders);
:func:`run` does everything else: run folder, device, seeding, model, the operation modes,
checkpoints, metrics, logs and figures.

=====================  ======================================================================
module                 job
=====================  ======================================================================
``dispatch``           :func:`run`: the run folder's lock and checks, the mode's dispatch
``trainer``            :class:`Run`: the modes and the epoch loop as named steps
``train_epoch``        the optimizer steps of an epoch; NaN and stop checks
``validation``         protocol and deployed validation, recomputed BatchNorm statistics
``checkpoints``        what best.pt and last.pt hold; restoring a resumed run
``evaluation``         :func:`evaluate`: one pass over a validation set (also under torchrun)
``loaders``            the DataLoaders
``rundir``             run-folder rules: run ids, taken folders and their messages
``reproducibility``    device choice, seeding, RNG states
``runlog``             the run's log and CSV files
=====================  ======================================================================
"""

from .dispatch import run
from .evaluation import evaluate
from .trainer import Run

__all__ = ["Run", "evaluate", "run"]
