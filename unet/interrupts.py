"""Ctrl-C and SIGTERM before a command's own handling takes over: one line, exit status 130, no
traceback. Standard library only, so that a script can install it before importing torch."""

from __future__ import annotations

import signal
import sys
from types import TracebackType

from .exitcodes import ExitCode

#: The exit status of an interrupted command (128 + SIGINT), as the shell reports it.
EXIT_INTERRUPTED = ExitCode.INTERRUPTED


class Interrupted(Exception):
    """A command was interrupted; the message says what was kept and how to go on."""


def _raise_interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


def quiet_interrupts(message: str = "interrupted during start-up; nothing was written") -> None:
    """From now on a Ctrl-C or SIGTERM that nothing else handles prints ``message`` (one line)
    instead of a traceback, and the process ends as interrupted (status 130 in the shell).

    Ctrl-C raises KeyboardInterrupt also when the process was started with SIGINT ignored (as a
    non-interactive shell starts background jobs), as the trainer's own stop handlers do later."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            print(message, file=sys.stderr, flush=True)
            return
        previous(kind, value, tb)

    sys.excepthook = hook
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass


class terminate_as_interrupt:  # noqa: N801 - used like a function: ``with terminate_as_interrupt():``
    """Within the block SIGTERM raises KeyboardInterrupt as Ctrl-C does (so the command's own
    ``except KeyboardInterrupt`` reports both); the previous handler is restored after."""

    def __enter__(self) -> None:
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            pass

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


__all__ = ["EXIT_INTERRUPTED", "Interrupted", "quiet_interrupts", "terminate_as_interrupt"]
