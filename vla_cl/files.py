"""Writing files so that a kill at any moment leaves either the old file or the new one, never half of one.

Every writer goes through :func:`atomic_path`: the content goes to a temporary file beside the target
(same folder, so the rename stays on one file system), is flushed and fsynced, and the temporary file is
renamed over the target (``os.replace``, atomic on POSIX); the folder is fsynced too, so that the rename
itself survives a power cut. A writer that raises leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any, **dumps: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, **{"indent": 2, **dumps}))


TEMPORARY_SUFFIXES = (".tmp", ".saving", ".replaced")


def filter_jsonl(path: str | Path, keep: Callable[[Any], bool]) -> int:
    """Rewrite a JSON-lines file (atomically) with only the records ``keep`` accepts, dropping any half-written
    line a killed writer left; returns how many lines were dropped (the file is untouched when none)."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # half a line from a killed write
            dropped += 1
            continue
        if keep(record):
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomic(path, "".join(line + "\n" for line in kept))
    return dropped


def remove_stale_temporaries(folder: str | Path, skip: Any = None) -> list[Path]:
    """Delete the hidden temporary files and folders a killed writer left under ``folder`` (names starting
    with a dot and ending in ``.tmp``, ``.saving`` or ``.replaced``, and the checkpoint staging folders
    ``.iter-*``). Call it only while holding the folder's run lock, when no writer of this run is alive;
    ``skip(path)`` True leaves a sub-folder alone (another live run's). Returns what was removed."""
    import shutil

    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in list(folder.iterdir()):
        name = entry.name
        stale = name.startswith(".") and (name.endswith(TEMPORARY_SUFFIXES) or name.startswith(".iter-"))
        if stale:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and not (skip is not None and skip(entry)):
            removed += remove_stale_temporaries(entry, skip)
    return removed
