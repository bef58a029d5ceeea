"""The command line of a run, recorded in its folder, and the hints built from it.

A trainer invocation (:class:`Invocation`) is the working directory, the interpreter, the
script, ``-f``/``-t``, every ``-o`` and the flags, as the user typed them. Each run folder keeps
them in ``command.txt`` (one block per invocation that used the folder: training, resume,
inference, visualize), so the hints (how to resume, how to evaluate, how to prepare the data)
are commands that work when pasted: the same interpreter, script, config and overrides, with
``cd <dir> &&`` in front when a relative path in them depends on the working directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import COMMON_KEYS, Key, parse_override
from .errors import ConfigError
from .fileio import atomic_write_text

#: File in the run folder that records every command that used it.
COMMAND_FILE = "command.txt"
#: Flags that only matter to the invocation that started a run (dropped from resume commands).
START_ONLY_FLAGS = ("--new-run", "--overwrite-trained-model")


def python_word() -> str:
    """``python`` when that name on the PATH is this interpreter, else this interpreter's path."""
    found = shutil.which("python")
    try:
        if found and Path(found).resolve() == Path(sys.executable).resolve():
            return "python"
    except OSError:
        pass
    return sys.executable


@dataclass(frozen=True)
class Invocation:
    """One trainer command: ``cd cwd && python script -f config -t top_key -o ... flags``.

    ``script`` and ``config`` are as typed (relative to ``cwd`` when not absolute); ``overrides``
    are the ``-o`` texts in order; ``flags`` the other options (``--new-run`` ...); ``argv`` the
    raw arguments after the script.
    """

    cwd: str
    python: str
    script: str
    config: str
    top_key: str
    overrides: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    argv: tuple[str, ...] = field(default=(), compare=False)

    def with_mode(self, mode: str, experiment_name: str | None = None, drop_flags: Iterable[str] = (),
                  add_flags: Iterable[str] = ()) -> Invocation:
        """The same command with ``-o operation_mode=mode`` (replacing any given), optionally
        ``-o experiment_name=...`` (replacing any given), without ``drop_flags``, plus ``add_flags``."""
        kept = [o for o in self.overrides if _key(o) not in ("operation_mode", *(("experiment_name",)
                                                                                if experiment_name else ()))]
        if experiment_name:
            kept.append(f"experiment_name={experiment_name}")
        kept.append(f"operation_mode={mode}")
        flags = [f for f in self.flags if f not in set(drop_flags)]
        flags += [f for f in add_flags if f not in flags]
        return replace(self, overrides=tuple(kept), flags=tuple(flags), argv=())

    def words(self) -> list[str]:
        """The command's words, without the ``cd``."""
        words = [self.python, self.script, "-f", self.config, "-t", self.top_key]
        for text in self.overrides:
            words += ["-o", text]
        return words + list(self.flags)

    def needs_cwd(self, keys: Sequence[Key] = COMMON_KEYS) -> bool:
        """Whether the command depends on the working directory: a relative script or config
        path, or a relative path value of a path key among ``keys`` in an ``-o``."""
        if not Path(self.script).is_absolute() or not Path(self.config).is_absolute():
            return True
        path_keys = {k.name for k in keys if k.kind == "path"}
        for text in self.overrides:
            try:
                key, value = parse_override(text)
            except ConfigError:
                continue
            if key in path_keys and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                return True
        return False

    def shell(self, keys: Sequence[Key] = COMMON_KEYS) -> str:
        """The command to paste into a POSIX shell (``cd <cwd> && ...`` when :meth:`needs_cwd`)."""
        command = shlex.join(self.words())
        return f"cd {shlex.quote(self.cwd)} && {command}" if self.needs_cwd(keys) else command

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-friendly dict (as stored in ``command.txt``)."""
        return {"cwd": self.cwd, "python": self.python, "script": self.script, "config": self.config,
                "top_key": self.top_key, "overrides": list(self.overrides), "flags": list(self.flags),
                "argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Invocation:
        """The inverse of :meth:`to_json`."""
        return cls(cwd=str(data["cwd"]), python=str(data["python"]), script=str(data["script"]),
                   config=str(data["config"]), top_key=str(data["top_key"]),
                   overrides=tuple(map(str, data.get("overrides", ()))), flags=tuple(map(str, data.get("flags", ()))),
                   argv=tuple(map(str, data.get("argv", ()))))


def _key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def trainer_script(fallback_folder: Path) -> str:
    """The trainer script as the user typed it (``sys.argv[0]`` when it is a ``*_unet.py`` file),
    else the ``*_unet.py`` in ``fallback_folder`` (the trainer's base folder)."""
    typed = sys.argv[0] if sys.argv else ""
    if typed.endswith("_unet.py") and Path(typed).is_file():
        return typed
    found = sorted(Path(fallback_folder).glob("*_unet.py"))
    return str(found[0].resolve()) if found else typed


def record(run_dir: Path, invocation: Invocation, mode: str) -> None:
    """Append ``invocation`` to ``run_dir/command.txt`` (atomically rewritten): a comment line
    with the time and mode, the working directory, the argv (JSON), the ready-to-paste command
    and a JSON line :func:`recorded` reads back."""
    path = run_dir / COMMAND_FILE
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = "\n".join([
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  operation_mode {mode}",
        f"cwd: {invocation.cwd}",
        f"argv: {json.dumps([invocation.script, *invocation.argv])}",
        f"command: {invocation.shell()}",
        f"json: {json.dumps(invocation.to_json())}",
    ])
    atomic_write_text(path, (old + "\n" if old else "") + block + "\n")


def recorded(run_dir: Path) -> list[Invocation]:
    """The invocations ``run_dir/command.txt`` holds, oldest first (empty when there is none or it
    cannot be read)."""
    path = Path(run_dir) / COMMAND_FILE
    if not path.is_file():
        return []
    found = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("json: "):
                found.append(Invocation.from_json(json.loads(line[len("json: "):])))
    except (OSError, ValueError, KeyError, TypeError):
        return found
    return found


def resume_command(invocation: Invocation, run_dir: Path, experiment_name: str,
                   keys: Sequence[Key] = COMMON_KEYS) -> str:
    """The command that resumes the run in ``run_dir`` that ``invocation`` started (or resumed):
    the same command with ``-o operation_mode=resume``, without the start-only flags, and with
    ``-o experiment_name=<run folder name>`` when ``--new-run`` put it beside ``experiment_name``."""
    moved = "--new-run" in invocation.flags or Path(run_dir).name != experiment_name
    name = Path(run_dir).name if moved else None
    return invocation.with_mode("resume", name, drop_flags=START_ONLY_FLAGS).shell(keys)


_PREPARE_SCRIPT = re.compile(r"(?<![\w./-])preprocessing/(\w+_prepare\.py)")


def prepare_hint(prepare_command: str, repo: Path, dataset_path: Path | None, default_out: Path | None,
                 cwd: Path | None = None) -> str:
    """``prepare_command`` with its ``preprocessing/<x>_prepare.py`` path made to work from ``cwd``
    (relative when inside the same tree, else absolute), the interpreter of this process, and
    ``--out <dataset_path>`` after ``--synthetic`` when the config's ``dataset_path`` is not the
    preparation's default output ``default_out``."""
    cwd = Path.cwd() if cwd is None else cwd

    def shown(path: Path) -> str:
        relative = os.path.relpath(path, cwd)
        return relative if not relative.startswith("../../../") else str(path)

    def script(match: re.Match) -> str:
        return shlex.quote(shown(repo / "preprocessing" / match[1]))

    text = _PREPARE_SCRIPT.sub(script, prepare_command)
    if text.startswith("python "):
        text = shlex.quote(python_word()) + text[len("python"):]
    if dataset_path is not None and default_out is not None and \
            Path(dataset_path).resolve() != Path(default_out).resolve():
        text = text.replace("--synthetic", f"--synthetic --out {shlex.quote(shown(Path(dataset_path)))}", 1)
    return text
