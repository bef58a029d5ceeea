"""Exclusive locks on the folders a command writes: one process per run folder, prediction
output or prepared data set.

The lock is a hidden file beside the folder, ``<parent>/.<name>.lock`` (inside it, ``.unet.lock``,
when only the folder is writable), created with
``O_CREAT | O_EXCL`` semantics (a complete file is hard-linked into place, which fails when the
name exists) and holding JSON: ``pid``, ``host``, ``command``, ``since`` (UTC, ISO 8601) and the
process start time. It is held for the whole command and removed on exit. A lock whose process
is gone (same host, the pid no longer runs, or now runs another program) is stale: the next
command takes it over, so a crash or ``kill -9`` never blocks the folder. A second live process
gets :class:`LockedError`: one line naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError, short_repr


class LockedError(UserError):
    """Another live process holds the folder's lock."""


def lock_path(folder: str | os.PathLike[str]) -> Path:
    """Where the lock of ``folder`` lives: ``<parent>/.<name>.lock`` (never inside ``folder``,
    so that locking neither creates nor changes it)."""
    folder = Path(os.path.abspath(folder))
    return folder.parent / f".{folder.name}.lock"


def _start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc); None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _stale(holder: dict[str, Any]) -> bool:
    """Whether the process that wrote ``holder`` is gone (only decidable on this host)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    if not _alive(pid):
        return True
    started = holder.get("started")
    return started is not None and _start_time(pid) not in (None, started)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``process 1234 on host (python em_unet.py ...) since 2026-01-01T10:00:00Z``."""
    if holder is None:
        return "another process (its lock file is unreadable)"
    command = short_repr(str(holder.get("command", "?")), 160).strip("'\"")
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} ({command}) "
            f"since {holder.get('since', '?')}")


def command_line() -> str:
    """This process's command as a user typed it: ``python -m unet.predict ...`` or ``em_unet.py ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    program = f"python -m {name.removesuffix('.__main__')}" if name else Path(sys.argv[0]).name
    return " ".join([program, *sys.argv[1:]])


class FolderLock:
    """The exclusive lock of ``folder`` (see the module docstring); ``what`` names the folder in
    messages (e.g. ``"run folder"``). Use as a context manager or call :meth:`acquire` /
    :meth:`release`."""

    def __init__(self, folder: str | os.PathLike[str], what: str, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = lock_path(folder)
        parent, inside = self.path.parent, Path(os.path.abspath(folder)) / ".unet.lock"
        if parent.is_dir() and not os.access(parent, os.W_OK) and self.folder.is_dir() \
                and os.access(self.folder, os.W_OK):
            self.path = inside  # a writable folder in a read-only parent: every process chooses the same
        self.command = command if command is not None else command_line()
        self.held = False

    def acquire(self) -> None:
        """Take the lock; LockedError naming the holder when a live process has it; DataError-like
        UserError when the lock cannot be written at all."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command[:1000],
                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "started": _start_time(os.getpid())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise UserError(f"{self.what} {self.folder} cannot be locked: {exc.strerror or exc} in "
                            f"{self.path.parent}") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails when the lock exists
                    self.held = True
                    return
                except FileExistsError:
                    holder = _read(self.path)
                    if holder is not None and _stale(holder):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.path)  # a crashed process's lock
                        continue
                    if holder is None and _age(self.path) > 10.0:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.path)  # unreadable and old: not a lock being written
                        continue
                    raise LockedError(f"{self.what} {self.folder} is in use by {describe_holder(holder)}; wait for "
                                      f"it to finish (or, if that process is gone, remove {self.path})") from None
            raise LockedError(f"{self.what} {self.folder} is locked ({self.path}) and the lock could not be taken")
        except OSError as exc:
            raise UserError(f"{self.what} {self.folder} cannot be locked: {exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        if not self.held:
            return
        self.held = False
        holder = _read(self.path)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str, command: str | None = None) -> Iterator[FolderLock]:
    """``with folder_lock(out, "output folder"):`` hold ``out``'s lock for the block."""
    lock = FolderLock(folder, what, command)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


__all__ = ["FolderLock", "LockedError", "describe_holder", "folder_lock", "lock_path"]
