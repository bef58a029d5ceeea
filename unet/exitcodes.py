"""The exit statuses of every command (trainers, predict, export, results, sweep, prepare scripts).

======  ===============  ==========================================================================
status  name             meaning
======  ===============  ==========================================================================
0       ``OK``           done
1       ``PARTIAL``      finished, but not everything: predict skipped unsupported inputs, a sweep
                         had a failed experiment (also Python's status for an uncaught exception)
2       ``USER_ERROR``   bad input, one ``error:`` line on stderr (argparse's usage errors too;
                         predict: an input failed)
3       ``DIVERGED``     a training run stopped at a NaN or infinite loss; its checkpoints of the
                         last good epoch are kept
130     ``INTERRUPTED``  stopped by Ctrl-C or SIGTERM (128 + SIGINT, the shell convention)
======  ===============  ==========================================================================

Standard library only (like :mod:`unet.interrupts`, which a script imports before torch).
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """A command's exit status; an int, so ``sys.exit(ExitCode.INTERRUPTED)`` exits with 130."""

    OK = 0
    PARTIAL = 1
    USER_ERROR = 2
    DIVERGED = 3
    INTERRUPTED = 130


__all__ = ["ExitCode"]
