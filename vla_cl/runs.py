"""Run directories: every command writes its resolved config, metrics and artifacts in one place.

Layout of a run directory::

    <out_dir>/
      config.yaml     the fully resolved config the run used (written once, when the run first starts)
      meta.json       command, argv, versions, the first start, and one entry per resume
      metrics.jsonl   one JSON object per line, appended as the run goes
      artifacts/      files the command produces (plots, videos, checkpoints, ...)
      .lock           the pid of the process running in the folder (while it runs)

Opening is checking: :meth:`RunDir.open` refuses a folder that holds another command's run or another
config (execution-only settings, ``affects_results=False``, may differ), a path that is a file, an
unwritable place, a corrupt ``config.yaml`` and a folder another live process is running in, and writes
nothing. The folder, its config and its metadata are written by :meth:`RunDir.begin`, which every write
(``log``, ``artifact``, ``artifacts``, ``write_json``) calls first: a command that fails while it still
checks its inputs leaves the folder as it found it, and running it again with the corrected value works.

Re-running a command with the same ``out_dir`` and config continues in that directory (commands that can
resume do so). The lock file holds the running process's pid; a lock whose process is gone (a killed run)
is taken over. Every file is written atomically (``vla_cl.files``: a hidden temporary file, renamed when
complete; what a killed writer left is removed when the run starts again); a metrics line is appended with
one ``write`` call, so a kill never leaves half a line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vla_cl.config import execution_only_keys, plain
from vla_cl.errors import RunLocked
from vla_cl.files import remove_stale_temporaries, write_json_atomic, write_text_atomic

LOCK_FILE = ".lock"


class RunDirConflict(ValueError):
    """``out_dir`` already holds a run made with a different config, or cannot hold one."""


def _json_default(value: Any) -> Any:
    converted = plain(value)
    if converted is value:
        raise TypeError(f"metrics value of type {type(value).__name__} is not JSON serialisable")
    return converted


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/inf; write null so every line stays valid JSON for other tools.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def default_out_dir(command: str) -> Path:
    return Path("runs") / command / time.strftime("%Y%m%d-%H%M%S")


def latest_report(command: str, near: Path | None = None) -> Path | None:
    """The newest ``report.html`` of a finished ``command`` run: under ``runs/<command>/`` (the default run
    folders) and beside ``near``'s parent (a run folder chosen with out_dir=), or None."""
    roots = {default_out_dir(command).parent.resolve()}
    if near is not None:
        roots.add(Path(near).resolve().parent.parent / command)
    reports = [p for root in roots if root.is_dir() for p in root.glob("*/report.html")]
    return max(reports, key=lambda p: p.stat().st_mtime) if reports else None


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _writable(path: Path) -> None:
    """Raise RunDirConflict unless ``path`` is (or can become) a writable folder."""
    if path.exists() and not path.is_dir():
        raise RunDirConflict(f"out_dir {path} is a file, not a folder; choose another out_dir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirConflict(f"out_dir {path} cannot be created: {existing} is a file; choose another out_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirConflict(f"out_dir {path} cannot be written: no write permission on {existing}; choose "
                             "another out_dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def lock_holder(path: Path) -> dict | None:
    """The live process holding ``path``'s run lock (pid, host, since), or None (no lock, or a stale one)."""
    lock = path / LOCK_FILE
    try:
        holder = json.loads(lock.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(holder, dict) or holder.get("pid") == os.getpid():
        return None
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return None  # the process is gone: a killed run left it
    return holder


class RunDir:
    """A command's output folder; create it with :meth:`open`, write through it (see the module docstring)."""

    def __init__(self, path: Path, command: str):
        self.path = Path(path)
        self.command = command
        self._pending: tuple[dict, dict] | None = None  # (resolved config, meta) until begin()
        self._locked = False

    @classmethod
    def open(cls, path: str | Path | None, command: str, config: Any, argv: list[str] | None = None) -> RunDir:
        """Check that ``path`` can hold this run (see the module docstring); writes nothing.

        Raises RunDirConflict (another command or config, a file in the way, not writable, a corrupt
        config.yaml) or RunLocked (another live process runs there)."""
        run = cls(Path(path) if path else default_out_dir(command), command)
        _writable(run.path)
        resolved = plain(config)
        config_file = run.path / "config.yaml"
        if config_file.exists():
            try:
                previous = yaml.safe_load(config_file.read_text()) or {}
            except yaml.YAMLError as error:
                raise RunDirConflict(f"{config_file} is corrupt ({str(error).splitlines()[0]}); delete the folder "
                                     "to start over, or choose another out_dir") from None
            meta_file = run.path / "meta.json"
            try:
                previous_command = json.loads(meta_file.read_text()).get("command") if meta_file.exists() else command
            except json.JSONDecodeError:
                previous_command = command  # meta.json is informative; config.yaml decides
            free = execution_only_keys(config) | {"out_dir"}
            changed = [k for k in _diff_keys(previous, resolved) if k not in free]
            if previous_command != command or changed:
                what = f"command {previous_command!r}" if previous_command != command else f"keys {changed[:8]}"
                raise RunDirConflict(
                    f"out_dir {run.path} already holds a run with a different config ({what}); "
                    "choose another out_dir or delete that folder to start over."
                )
        holder = lock_holder(run.path)
        if holder is not None:
            raise RunLocked(f"out_dir {run.path} is in use by another process (pid {holder.get('pid')} on "
                            f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish or "
                            "choose another out_dir")
        meta = {
            "command": command,
            "argv": list(argv if argv is not None else sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        run._pending = (resolved, meta)
        return run

    # ------------------------------------------------------------------ starting for real

    def begin(self) -> RunDir:
        """Create the folder, take its lock, write config.yaml (first start) and meta.json (the first start
        kept, this start appended as a resume). Idempotent; called by every write."""
        if self._pending is None:
            return self
        resolved, meta = self._pending
        (self.path / "artifacts").mkdir(parents=True, exist_ok=True)
        self._lock()
        # What a killed writer of this run left half-written (sub-runs held by live processes excepted).
        remove_stale_temporaries(self.path, skip=lambda sub: lock_holder(sub) is not None)
        config_file = self.path / "config.yaml"
        if not config_file.exists():
            write_text_atomic(config_file, yaml.safe_dump(resolved, sort_keys=False))
        meta_file = self.path / "meta.json"
        try:
            first = json.loads(meta_file.read_text()) if meta_file.exists() else None
        except json.JSONDecodeError:
            first = None
        if first is None:
            record = {**meta, "resumes": []}
        else:
            record = {**first, "resumes": [*first.get("resumes", []),
                                           {"started": meta["started"], "argv": meta["argv"]}]}
        write_json_atomic(meta_file, record)
        self._pending = None
        return self

    def _lock(self) -> None:
        lock = self.path / LOCK_FILE
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = lock_holder(self.path)
                if holder is not None:
                    raise RunLocked(f"out_dir {self.path} is in use by another process (pid {holder.get('pid')}); "
                                    "wait for it to finish or choose another out_dir") from None
                lock.unlink(missing_ok=True)  # stale (or ours): take it over
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(mine)
            self._locked = True
            return
        raise RunLocked(f"could not take the lock of {self.path}: another process keeps taking it")

    def close(self) -> None:
        """Release the folder's lock (the CLI calls this when the command ends, however it ends)."""
        if self._locked:
            lock = self.path / LOCK_FILE
            holder = None
            try:
                holder = json.loads(lock.read_text())
            except (OSError, json.JSONDecodeError):
                pass
            if isinstance(holder, dict) and holder.get("pid") == os.getpid():
                lock.unlink(missing_ok=True)
            self._locked = False

    def __enter__(self) -> RunDir:  # noqa: PYI034 (RunDir is final; typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    @property
    def artifacts(self) -> Path:
        self.begin()
        return self.path / "artifacts"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, **metrics: Any) -> dict[str, Any]:
        """Append one line of metrics (with a wall-clock timestamp) to ``metrics.jsonl``, in one write."""
        self.begin()
        record = {"time": round(time.time(), 3), **{k: _finite_or_none(plain(v)) for k, v in metrics.items()}}
        line = (json.dumps(record, default=_json_default) + "\n").encode()
        fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return record

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every metrics line (a torn last line, from a machine crash mid-append, is skipped)."""
        if not self.metrics_path.exists():
            return []
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise ValueError(f"{self.metrics_path} line {i + 1} is not JSON; the file is damaged") from None
        return records

    def artifact(self, name: str) -> Path:
        """Path for an artifact file (parent folders are created)."""
        target = self.artifacts / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, name: str, payload: Any) -> Path:
        """Write a JSON file at the top of the run directory (e.g. ``summary.json``), atomically."""
        self.begin()
        return write_json_atomic(self.path / name, plain(payload), default=_json_default)
