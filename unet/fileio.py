"""Atomic file output: a reader sees either the old complete file or the new complete file.

Every write goes to a temporary sibling (same folder, so the final ``os.replace`` is a rename
on one file system), is flushed and fsynced, then renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from unet.errors import DataError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file a normal file's mode
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.filename is None or Path(exc.filename) == tmp:  # name the file being written, not the temporary
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, target: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``target`` atomically (checkpoints are never half-written)."""
    import io

    import torch

    buffer = io.BytesIO()  # torch.save reports a full disk as a RuntimeError; a plain write says ENOSPC
    torch.save(obj, buffer)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())


@dataclass(frozen=True)
class PreparedLayout:
    """What one kind of preparation writes into its output folder.

    ``marker`` is the JSON file that says a preparation finished there (written last);
    ``files`` are glob patterns, relative to the folder, of every other file it writes: exactly
    what ``--overwrite`` may remove. ``kind`` names such a folder in messages.
    ``adopt_without_marker``: a folder holding nothing but files of the layout also counts as
    a previous preparation (for the synthetic sources, which older versions wrote unmarked);
    ``--overwrite`` still removes only files a marker lists, so such a folder's files are in
    the way of a new preparation rather than deleted (they may be the user's own).
    """

    marker: str
    files: tuple[str, ...]
    kind: str
    adopt_without_marker: bool = False

    @property
    def partial_marker(self) -> str:
        """The file present while a preparation replaces a previous one in place."""
        return f".{self.marker}.partial"


#: PNG pairs for the EM and NIH trainers (:mod:`unet.prep.pngpairs`).
PAIRS = PreparedLayout(
    "prepare.json",
    ("train/images/*.png", "train/masks/*.png", "val/images/*.png", "val/masks/*.png"),
    "a prepared data set",
)
#: The synthetic SCGM release of ``gm_prepare.py --synthetic`` (:mod:`unet.prep.gm`).
GM_RELEASE = PreparedLayout(
    "synthetic_release.json",
    ("site*-sc*-image.nii.gz", "site*-sc*-mask-r*.nii.gz"),
    "a synthetic GM release",
)
#: The stand-in raw data that ``em_prepare.py`` / ``nih_prepare.py --synthetic`` then prepare.
SYNTHETIC_SOURCE = PreparedLayout(
    "synthetic_source.json",
    ("train-volume.tif", "train-labels.tif", "images/*.nii.gz", "labels/*.nii.gz"),
    "synthetic source data",
    adopt_without_marker=True,
)


def check_output_dir(target: str | os.PathLike[str], layout: PreparedLayout = PAIRS,
                     overwrite: bool = False) -> None:
    """Raise :class:`DataError` unless a preparation of ``layout`` may write into ``target``.

    Allowed: a missing or empty folder, and with ``overwrite`` a previous preparation's
    folder (it holds ``layout.marker``, or the partial marker of an interrupted one). Refused,
    naming the folder and what is in it: a non-empty folder no preparation wrote (a few entry
    names and their count), a previous preparation without ``overwrite`` (its kind, pair
    counts and source from the marker), and a path that is not a folder.
    """
    target = Path(target)
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise DataError(f"output folder {target} exists and is not a folder; choose another --out")
    entries = sorted(os.listdir(target))
    if not entries:
        return
    if _is_previous(target, layout):
        if overwrite:
            return
        raise DataError(
            f"output folder {target} already holds {describe_prepared(target, layout)}; pass --overwrite "
            "to replace it (only what a preparation writes is replaced, other files there are kept)"
        )
    shown = ", ".join(name + ("/" if (target / name).is_dir() else "") for name in entries[:3])
    more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
    raise DataError(
        f"output folder {target} is not empty and no preparation wrote it (no {layout.marker}): "
        f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} ({shown}{more}); "
        "choose another --out or empty it"
    )


def describe_prepared(folder: Path, layout: PreparedLayout) -> str:
    """One phrase describing a previous preparation from its marker JSON, e.g.
    ``a prepared data set (ISBI 2012 EM segmentation: 24 train / 6 val pairs; source
    /data/train-labels.tif, /data/train-volume.tif)``; counts come from the ``pairs`` or
    ``slices`` entry, the source from ``source``, GM releases list sites and subjects."""
    marker = folder / layout.marker
    if not marker.is_file():
        if (folder / layout.partial_marker).is_file():
            return f"{layout.kind} from an interrupted preparation"
        n = len(_relative_files(folder))
        return f"{layout.kind} ({n} file{'' if n == 1 else 's'}, no {layout.marker})"
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if not isinstance(info, dict):
        return f"{layout.kind} (unreadable {layout.marker})"
    details = []
    counts = info.get("pairs") or info.get("slices")
    if isinstance(counts, dict) and {"train", "val"} <= set(counts):
        details.append(f"{counts['train']} train / {counts['val']} val pairs")
    if isinstance(info.get("sites"), list) and isinstance(info.get("subjects"), list):
        subjects = info["subjects"]
        details.append(f"sites {', '.join(str(s) for s in info['sites'])}, {len(subjects)} subjects each")
    source = info.get("source")
    if isinstance(source, dict):
        source = ", ".join(str(v) for v in source.values())
    if source:
        details.append(f"source {source}")
    name = info.get("dataset") or info.get("kind")
    name = None if name == layout.kind else name
    text = f"{name}: {'; '.join(details)}" if name and details else (name or "; ".join(details))
    return f"{layout.kind} ({text})" if text else layout.kind


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str], layout: PreparedLayout = PAIRS, *,
                     overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success its files become ``target``'s.

    Used for prepared datasets: an interrupted preparation leaves no folder that looks
    finished, and nothing of the user's is deleted. :func:`check_output_dir` runs first (a
    non-empty folder no preparation wrote is refused; a previous preparation's only with
    ``overwrite``). Every file the body writes must match ``layout`` (else ``ValueError``);
    when it wrote no ``layout.marker``, a minimal one (``{"kind": ...}``) is added. The marker
    records the files written (``"files"``, relative paths).

    A missing ``target`` is created by renaming the finished temporary folder. An existing
    one is updated in place: the partial marker is written, the old marker and the files the
    old marker lists are removed (an older marker without a list: the files matching
    ``layout.files``; no marker: none) (folders they leave empty too), the new files are
    moved in, the new marker last, then the partial marker goes. Other files are kept; one
    that would be overwritten raises :class:`DataError` before anything is touched.
    """
    target = Path(target)
    check_output_dir(target, layout, overwrite)
    existing = target.is_dir()
    parent = Path(os.path.realpath(target)).parent if existing else target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        written = _relative_files(tmp)
        stray = [rel for rel in written if rel != layout.marker and not _matches(rel, layout)]
        if stray:
            raise ValueError(f"the preparation wrote {stray[:3]} outside its layout {layout.files}")
        _record_files(tmp / layout.marker, layout, [rel for rel in written if rel != layout.marker])
        if existing:
            _replace_in_place(target, tmp, layout)
        else:
            os.replace(tmp, target)
            _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _record_files(marker: Path, layout: PreparedLayout, files: list[str]) -> None:
    """Add ``files`` (what this preparation wrote) to its marker JSON, writing a minimal marker
    (``{"kind": ...}``) when the preparation wrote none: a later ``--overwrite`` removes exactly these."""
    info: Any = None
    if marker.is_file():
        info = json.loads(marker.read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        info = {"kind": layout.kind}
    info["files"] = sorted(files)
    marker.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def recorded_files(folder: Path, layout: PreparedLayout) -> list[str] | None:
    """The files a previous preparation in ``folder`` recorded in its marker (or in the partial
    marker of an interrupted replacement), relative to ``folder``; None when no marker holds a
    list (an older preparation; with no marker at all, nothing is recorded: ``[]``)."""
    found = False
    files: set[str] = set()
    for name in (layout.marker, layout.partial_marker):
        path = folder / name
        if not path.is_file():
            continue
        found = True
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        listed = info.get("files") if isinstance(info, dict) else None
        if not isinstance(listed, list) or not all(isinstance(rel, str) for rel in listed):
            return None
        files.update(listed)
    return sorted(files) if found else []


def _is_previous(folder: Path, layout: PreparedLayout) -> bool:
    if (folder / layout.marker).is_file() or (folder / layout.partial_marker).is_file():
        return True
    if not layout.adopt_without_marker:
        return False
    files = _relative_files(folder)
    return bool(files) and all(_matches(rel, layout) for rel in files)


def _relative_files(folder: Path) -> list[str]:
    """Every non-directory entry below ``folder`` as a POSIX path relative to it (links not followed)."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        out.extend((rel_root / name).as_posix() for name in files)
        out.extend((rel_root / name).as_posix() for name in dirs if (Path(root) / name).is_symlink())
    return sorted(out)


def _matches(rel: str, layout: PreparedLayout) -> bool:
    path = PurePosixPath(rel)
    return any(path.match(pattern) and len(path.parts) == len(PurePosixPath(pattern).parts)
               for pattern in layout.files)


def _replace_in_place(target: Path, tmp: Path, layout: PreparedLayout) -> None:
    """Swap the previous preparation's files in ``target`` for those in ``tmp`` (see
    :func:`atomic_directory`); files of the user's stay."""
    listed = recorded_files(target, layout)
    present = set(_relative_files(target))
    if listed is None:  # an older preparation's marker without a file list: its layout's files
        listed = [rel for rel in present if _matches(rel, layout)]
    old = sorted(rel for rel in listed if rel in present and _matches(rel, layout) and _plain_parents(target, rel))
    owned = set(old) | {layout.marker, layout.partial_marker}
    new = _relative_files(tmp)
    for rel in new:
        dest = target / rel
        blocked = [p for p in _prefixes(rel)
                   if os.path.lexists(target / p) and (not (target / p).is_dir() or (target / p).is_symlink())]
        if blocked or (os.path.lexists(dest) and rel not in owned):
            in_way = target / (blocked[0] if blocked else rel)
            raise DataError(f"{in_way} is in the way of the new preparation and was not written by one; "
                            "move it elsewhere and run again")
    partial = target / layout.partial_marker
    state = {"kind": layout.kind, "state": "being replaced",
             "files": sorted(set(old) | {rel for rel in new if rel != layout.marker})}
    partial.write_text(json.dumps(state) + "\n", encoding="utf-8")
    _fsync_dir(target)
    (target / layout.marker).unlink(missing_ok=True)
    for rel in old:
        (target / rel).unlink()
    for folder in sorted({p for rel in old for p in _prefixes(rel)}, key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):  # not empty: something of the user's is in it
            (target / folder).rmdir()
    for rel in new:
        if rel != layout.marker:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, target / rel)
    os.replace(tmp / layout.marker, target / layout.marker)
    _fsync_dir(target)
    partial.unlink()


def _prefixes(rel: str) -> list[PurePosixPath]:
    """The folders of a relative path, outermost first (``a/b/c.png`` -> ``a``, ``a/b``)."""
    parts = PurePosixPath(rel).parts[:-1]
    return [PurePosixPath(*parts[: i + 1]) for i in range(len(parts))]


def _plain_parents(target: Path, rel: str) -> bool:
    """True when no folder between ``target`` and ``rel`` is a symbolic link (never delete through one)."""
    return not any((target / p).is_symlink() for p in _prefixes(rel))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable_dir(folder: str | os.PathLike[str], what: str) -> None:
    """Raise :class:`DataError` unless files can be written in ``folder`` (created when missing).

    Checked before any work, so that a command does not compute everything and then fail on
    the first write: ``folder`` (or a folder above it) is a file, it cannot be created, or a
    file cannot be created in it (read-only folder or file system, full disk). ``what`` names
    the folder in the message (e.g. ``"output folder"``).
    """
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            where = "is" if parent == folder else f"is under {parent}, which is"
            raise DataError(f"{what} {folder} {where} a file, not a folder; choose another")
        if parent.is_dir():
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DataError(f"{what} {folder} cannot be written ({reason}); choose another or fix its "
                        "permissions / free space") from None


#: The name :func:`atomic_path` gives its temporary: ``.<target name>.<8 random characters>.tmp``.
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike[str], targets: Iterable[str] | None = None,
                             recursive: bool = False) -> list[Path]:
    """Remove the temporaries an interrupted :func:`atomic_path` write left in ``folder``.

    Only regular files named as :data:`TEMPORARY_NAME` are touched (never links or folders),
    and with ``targets`` only those of the listed file names (the files the calling command
    writes there). Call it only while the command owns ``folder`` (holds its lock,
    :mod:`unet.lock`): no other writer can be mid-write then. ``recursive`` also cleans the
    sub-folders (not following links). Returns the removed paths.
    """
    folder = Path(folder)
    wanted = None if targets is None else set(targets)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _dirs, names in walker:
        for name in names:
            match = TEMPORARY_NAME.match(name)
            path = Path(root) / name
            if match is None or (wanted is not None and match["target"] not in wanted):
                continue
            if path.is_symlink() or not path.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def removed_note(removed: list[Path], where: str) -> str:
    """The note a command prints after :func:`remove_stale_temporaries`: ``note: removed N
    temporary file(s) <where> (first three names ...)``, e.g. ``where`` = "an interrupted
    predict left in OUT"."""
    names = ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
    return f"note: removed {len(removed)} temporary file(s) {where} ({names})"
