"""Run directories: every command writes its resolved config, metrics and artifacts in one place.

Layout of a run directory::

    <out_dir>/
      config.yaml     the fully resolved config the run used
      meta.json       command, argv, package versions, start time
      metrics.jsonl   one JSON object per line, appended as the run goes
      artifacts/      files the command produces (plots, videos, checkpoints, ...)

Re-running a command with the same ``out_dir`` and the same config continues in that directory
(commands that can resume do so); a different config is refused so that no result is overwritten.
Execution-only settings (fields declared with ``affects_results=False``, e.g. worker counts) may differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from vla_cl.config import execution_only_keys


class RunDirConflict(ValueError):
    """``out_dir`` already holds a run made with a different config."""


def _plain(value: Any) -> Any:
    """Convert dataclasses, paths and numpy/torch scalars into JSON/YAML-friendly values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        raise TypeError(f"metrics value of type {type(value).__name__} is not JSON serialisable")
    return plain


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/inf; write null so every line stays valid JSON for other tools.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def default_out_dir(command: str) -> Path:
    return Path("runs") / command / time.strftime("%Y%m%d-%H%M%S")


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [k for key in keys for k in _diff_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


class RunDir:
    """A command's output folder; create it with :meth:`open`."""

    def __init__(self, path: Path, command: str):
        self.path = Path(path)
        self.command = command
        self.artifacts = self.path / "artifacts"
        self.metrics_path = self.path / "metrics.jsonl"

    @classmethod
    def open(cls, path: str | Path | None, command: str, config: Any, argv: list[str] | None = None) -> "RunDir":
        """Create (or continue) the run directory for ``command`` with ``config``.

        Raises RunDirConflict when ``path`` holds a run of another command or another config.
        """
        run = cls(Path(path) if path else default_out_dir(command), command)
        resolved = _plain(config)
        config_file = run.path / "config.yaml"
        if config_file.exists():
            previous = yaml.safe_load(config_file.read_text()) or {}
            meta_file = run.path / "meta.json"
            previous_command = json.loads(meta_file.read_text()).get("command") if meta_file.exists() else command
            free = execution_only_keys(config) | {"out_dir"}
            changed = [k for k in _diff_keys(previous, resolved) if k not in free]
            if previous_command != command or changed:
                what = f"command {previous_command!r}" if previous_command != command else f"keys {changed[:8]}"
                raise RunDirConflict(
                    f"out_dir {run.path} already holds a run with a different config ({what}); "
                    "choose another out_dir or delete that folder to start over."
                )
        run.artifacts.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(resolved, sort_keys=False))
        meta = {
            "command": command,
            "argv": list(argv if argv is not None else sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": platform.python_version(),
            "platform": platform.platform(),
        }
        (run.path / "meta.json").write_text(json.dumps(meta, indent=2))
        return run

    def log(self, **metrics: Any) -> dict[str, Any]:
        """Append one line of metrics (with a wall-clock timestamp) to ``metrics.jsonl``."""
        record = {"time": round(time.time(), 3), **{k: _finite_or_none(_plain(v)) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
        return record

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def artifact(self, name: str) -> Path:
        """Path for an artifact file (parent folders are created)."""
        target = self.artifacts / name
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_json(self, name: str, payload: Any) -> Path:
        """Write a JSON file at the top of the run directory (e.g. ``summary.json``)."""
        target = self.path / name
        target.write_text(json.dumps(_plain(payload), indent=2, default=_json_default))
        return target
