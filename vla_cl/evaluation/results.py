"""What an evaluation returns: per task and axis, every episode's outcome and the summary with its interval.

:class:`CellResult` holds one (task, axis) cell: the reset seed, success, length and return of each
episode in order (so two results of the same suite pair episode by episode), or why the axis does not
apply to the policy. :class:`SuiteResult` holds the cells of a suite for one policy and writes itself as
JSON (``result.json``, every episode) and Markdown (``result.md``, the table people read).

Success rates carry a Wilson 95 % score interval (``vla_cl.stats.wilson_interval``): with 50
episodes a 60 % success rate reads 46-73 %, which is why comparisons of policies should use the paired
intervals of :mod:`vla_cl.evaluation.retention` rather than two overlapping rates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from vla_cl.stats import wilson_interval

FORMAT_VERSION = 1


@dataclasses.dataclass
class CellResult:
    """One task under one axis: the episodes in evaluation order, or why the axis does not apply."""

    task: str
    axis: str
    seeds: list[int] = dataclasses.field(default_factory=list)
    successes: list[bool] = dataclasses.field(default_factory=list)
    lengths: list[int] = dataclasses.field(default_factory=list)
    returns: list[float] = dataclasses.field(default_factory=list)
    not_applicable: str = ""  # the reason, when the axis does not apply to the policy
    # each episode's named start (a task whose layout has a finite set of starts), None for a continuous draw
    initial_states: list[str | None] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.initial_states:
            self.initial_states = [None] * len(self.successes)
        if len(self.initial_states) != len(self.successes):
            raise ValueError(f"{self.task}/{self.axis}: {len(self.initial_states)} initial states for "
                             f"{len(self.successes)} episodes")

    @property
    def applicable(self) -> bool:
        return not self.not_applicable

    @property
    def episodes(self) -> int:
        return len(self.successes)

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.successes)) if self.successes else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(int(np.sum(self.successes)), self.episodes)

    @property
    def distinct_initial_states(self) -> int:
        """How many different starts the episodes covered: each named start once, each continuous draw apart.
        Fewer than ``episodes`` means starts repeated (the Bridge scenes have 24-64): the interval is then over
        episodes, i.e. the policy's own randomness and the draw of starts from the task's finite set, not
        over that many distinct situations."""
        named = {s for s in self.initial_states if s is not None}
        return len(named) + sum(s is None for s in self.initial_states)

    def summary(self) -> dict[str, Any]:
        if not self.applicable:
            return {"task": self.task, "axis": self.axis, "applicable": False, "reason": self.not_applicable}
        low, high = self.interval
        return {
            "task": self.task, "axis": self.axis, "applicable": True, "episodes": self.episodes,
            "distinct_initial_states": self.distinct_initial_states,
            "success_rate": self.success_rate, "ci95": [low, high],
            "mean_length": float(np.mean(self.lengths)), "mean_return": float(np.mean(self.returns)),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "seeds": self.seeds, "successes": [bool(s) for s in self.successes],
                "lengths": self.lengths, "returns": self.returns, "initial_states": self.initial_states}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        return cls(data["task"], data["axis"], list(data.get("seeds", [])), [bool(s) for s in data.get("successes", [])],
                   list(data.get("lengths", [])), list(data.get("returns", [])),
                   "" if data.get("applicable", True) else data.get("reason", "not applicable"),
                   list(data.get("initial_states", [])))


@dataclasses.dataclass
class SuiteResult:
    """A policy's results on a suite: ``cells[(task, axis)]``."""

    suite: dict[str, Any]  # the suite's config (SuiteConfig.to_dict())
    policy: str  # what was evaluated (a checkpoint folder, expert, random, ...)
    cells: dict[tuple[str, str], CellResult]
    seconds: float = 0.0

    def cell(self, task: str, axis: str = "in_distribution") -> CellResult:
        if (task, axis) not in self.cells:
            have = ", ".join(f"{t}/{a}" for t, a in self.cells)
            raise KeyError(f"no result for task {task!r} under axis {axis!r} (have: {have})")
        return self.cells[(task, axis)]

    def success(self, task: str, axis: str = "in_distribution") -> float:
        return self.cell(task, axis).success_rate

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(t for t, _ in self.cells))

    @property
    def axes(self) -> list[str]:
        return list(dict.fromkeys(a for _, a in self.cells))

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "suite": self.suite, "policy": self.policy,
                "seconds": round(self.seconds, 2), "cells": [c.to_dict() for c in self.cells.values()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteResult:
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"evaluation result has format_version {data.get('format_version')!r}; this reader "
                             f"understands {FORMAT_VERSION}")
        cells = [CellResult.from_dict(c) for c in data["cells"]]
        return cls(data["suite"], data["policy"], {(c.task, c.axis): c for c in cells}, data.get("seconds", 0.0))

    def markdown(self) -> str:
        """Success per task (rows) and axis (columns) with Wilson intervals, then lengths and returns."""
        axes = self.axes
        lines = [f"# {self.suite.get('name', 'suite')}: {self.policy}", "",
                 (f"Success rate (Wilson 95 % interval over the cell's episodes) over {self._episodes_note()}; "
                 f"{'greedy' if self.suite.get('greedy') else 'sampled at temperature ' + str(self.suite.get('temperature'))}"
                 " actions."), *self._starts_note(), "",
                 "| task | " + " | ".join(axes) + " |", "|---|" + "---|" * len(axes)]
        for task in self.tasks:
            row = []
            for axis in axes:
                cell = self.cells.get((task, axis))
                if cell is None:
                    row.append("")
                elif not cell.applicable:
                    row.append(f"n/a ({cell.not_applicable})")
                else:
                    low, high = cell.interval
                    row.append(f"{cell.success_rate:.0%} ({low:.0%}-{high:.0%})")
            lines.append(f"| {task} | " + " | ".join(row) + " |")
        lines += ["", "Mean episode length / mean return:", "", "| task | " + " | ".join(axes) + " |",
                  "|---|" + "---|" * len(axes)]
        for task in self.tasks:
            row = []
            for axis in axes:
                cell = self.cells.get((task, axis))
                row.append("" if cell is None or not cell.applicable
                           else f"{np.mean(cell.lengths):.1f} / {np.mean(cell.returns):.2f}")
            lines.append(f"| {task} | " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"

    def _starts_note(self) -> list[str]:
        """A line when some cell's episodes repeated starts: how many distinct ones each covered."""
        repeated = [c for c in self.cells.values() if c.applicable and c.distinct_initial_states < c.episodes]
        if not repeated:
            return []
        counts = ", ".join(f"{c.task} / {c.axis} {c.distinct_initial_states}" for c in repeated)
        return ["", ("Some cells repeated starts (tasks with a finite set of initial states): the interval is over "
                     f"episodes, which covered these numbers of distinct initial states: {counts}.")]

    def _episodes_note(self) -> str:
        counts = sorted({c.episodes for c in self.cells.values() if c.applicable})
        seeds = self.suite.get("seeds", [])
        what = f"{counts[0]} episodes" if len(counts) == 1 else f"{counts} episodes"
        return f"{what} per cell (evaluation seeds {seeds})"

    def write(self, folder: str | Path) -> Path:
        """``result.json`` and ``result.md`` in ``folder`` (written atomically); returns the JSON's path."""
        from vla_cl.files import write_text_atomic

        folder = Path(folder)
        write_text_atomic(folder / "result.md", self.markdown())
        return write_text_atomic(folder / "result.json", json.dumps(self.to_dict(), indent=1))


def read_result(path: str | Path) -> SuiteResult:
    """A result written by :meth:`SuiteResult.write` (its folder or its ``result.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "result.json"
    if not path.is_file():
        raise ValueError(f"no evaluation result at {path}; run `vla-cl eval` to make one")
    try:
        return SuiteResult.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as error:
        raise ValueError(f"{path} is not a readable evaluation result ({error}); delete it and evaluate again") from None
