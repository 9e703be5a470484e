"""Retention: how much of pi0's success on old tasks a fine-tuned pi kept, with paired intervals.

Forgetting on a task is pi0's success rate minus pi's, on the same suite cells. The two results must come
from the same suite, so that episode k of a cell starts from the same reset seed for both policies: the
episodes are *paired*, and an initial state that is hard for pi0 tends to be hard for pi too. The intervals
use that pairing (``vla_cl.stats``):

* per task: a paired percentile bootstrap of the mean of (pi0 success - pi success) over the cell's
  episodes, resampling episode indices jointly (10,000 resamples, 95 %);
* mean over tasks: a stratified paired bootstrap that resamples episodes within every task and averages the
  per-task differences (each task weighs the same, whatever its episode count).

Positive forgetting means pi lost success; negative means it gained (backward transfer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from vla_cl.evaluation.results import SuiteResult
from vla_cl.stats import Interval, paired_bootstrap_difference, paired_bootstrap_mean_difference


@dataclasses.dataclass(frozen=True)
class Retention:
    """Forgetting of one fine-tuned policy relative to pi0 on some tasks, under one axis."""

    axis: str
    tasks: tuple[str, ...]
    base: dict[str, float]  # pi0's success per task
    tuned: dict[str, float]  # pi's success per task
    forgetting: dict[str, Interval]  # base - tuned per task, with its paired interval
    mean_forgetting: Interval  # mean over tasks

    @property
    def mean_retention(self) -> float:
        """pi's mean success over the tasks."""
        return float(np.mean([self.tuned[t] for t in self.tasks]))

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "tasks": list(self.tasks), "base": self.base, "tuned": self.tuned,
                "forgetting": {t: i.to_dict() for t, i in self.forgetting.items()},
                "mean_forgetting": self.mean_forgetting.to_dict(), "mean_retention": self.mean_retention}


def _paired(base: SuiteResult, tuned: SuiteResult, task: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = base.cell(task, axis), tuned.cell(task, axis)
    if not (a.applicable and b.applicable):
        raise ValueError(f"task {task!r} under axis {axis!r} does not apply to both policies")
    if a.seeds != b.seeds:
        raise ValueError(f"task {task!r}, axis {axis!r}: the two results ran different episodes (seeds "
                         f"{a.seeds[:3]}... vs {b.seeds[:3]}...); evaluate both policies on the same suite")
    return np.asarray(a.successes, dtype=float), np.asarray(b.successes, dtype=float)


def retention(base: SuiteResult, tuned: SuiteResult, tasks: Sequence[str] | None = None,
              axis: str = "in_distribution", *, n_resamples: int = 10000, seed: int = 0) -> Retention:
    """Per-task and mean forgetting of ``tuned`` relative to ``base`` (see the module docstring); ``tasks``
    defaults to every task both results hold."""
    tasks = tuple(tasks) if tasks is not None else tuple(t for t in base.tasks if t in tuned.tasks)
    if not tasks:
        raise ValueError("retention needs at least one task that both results hold")
    pairs = {task: _paired(base, tuned, task, axis) for task in tasks}
    forgetting = {task: paired_bootstrap_difference(a, b, n_resamples=n_resamples, seed=seed)
                  for task, (a, b) in pairs.items()}
    mean = paired_bootstrap_mean_difference([a for a, _ in pairs.values()], [b for _, b in pairs.values()],
                                            n_resamples=n_resamples, seed=seed)
    return Retention(axis, tasks, {t: float(a.mean()) for t, (a, _) in pairs.items()},
                     {t: float(b.mean()) for t, (_, b) in pairs.items()}, forgetting, mean)


def markdown(result: Retention, base_label: str = "pi0", tuned_label: str = "pi") -> str:
    lines = [(f"Forgetting under axis {result.axis} ({base_label} success minus {tuned_label} success; paired "
             "bootstrap 95 % interval):"), "", f"| task | {base_label} | {tuned_label} | forgetting (95 % CI) |",
             "|---|---|---|---|"]
    for task in result.tasks:
        f = result.forgetting[task]
        lines.append(f"| {task} | {result.base[task]:.0%} | {result.tuned[task]:.0%} | "
                     f"{f.estimate:+.2f} ({f.low:+.2f} to {f.high:+.2f}) |")
    m = result.mean_forgetting
    lines.append(f"| **mean** | {np.mean(list(result.base.values())):.0%} | {result.mean_retention:.0%} | "
                 f"{m.estimate:+.2f} ({m.low:+.2f} to {m.high:+.2f}) |")
    return "\n".join(lines) + "\n"
