"""The forgetting law on robots: suite results turned into the shared law's points (``vla_cl.evaluation.law``).

A robot point's outcomes are, per retention task, each episode's success on the in-distribution axis keyed
by its reset seed, so pi0 and a fine-tuned policy pair episode by episode; its new-task outcomes likewise.
Snapshot points come from fewer episodes than final ones, so they are noisier: the report's ``r2_final`` uses
final policies only, the weighted fits weigh each point by its episodes' binomial variance, and the finding
compares final policies only (``vla_cl.evaluation.comparison``: the pair chosen on one half of the episodes
and measured on the other, and interpolated trade-off curves).
"""

from __future__ import annotations

import re

from vla_cl.evaluation.law import (  # noqa: F401  (the robot experiment's view of the shared law)
    Point,
    analyse,
    finding,
    fit_curve,
    least_forgetting,
    matched,
    pareto,
    r2_table,
)
from vla_cl.evaluation.law import make_point as _make_point
from vla_cl.evaluation.law import paired_difference as _paired_difference
from vla_cl.evaluation.results import SuiteResult

AXIS = "in_distribution"


def outcomes(result: SuiteResult, tasks: list[str]) -> dict[str, dict[int, float]]:
    """Per task, each in-distribution episode's success keyed by its reset seed."""
    cells = {t: result.cell(t, AXIS) for t in tasks}
    return {t: {seed: float(ok) for seed, ok in zip(c.seeds, c.successes)} for t, c in cells.items()}


def paired_difference(first: SuiteResult, second: SuiteResult, tasks: list[str], seed: int = 0):
    """Mean over ``tasks`` of (first's success - second's success), stratified paired bootstrap on shared episodes."""
    return _paired_difference(outcomes(first, tasks), outcomes(second, tasks), tasks, seed)


def make_point(key: str, method: str, family: str, setting: str, step: int, final: bool, result: SuiteResult,
               pi0: SuiteResult, new_task: str, retention_tasks: list[str], predictors: dict[str, float]) -> Point:
    """A robot point; replicas of one arm (the same method and setting at training seeds ``_s0``, ``_s1``, ...)
    share ``arm``."""
    return _make_point(key, method, family, setting, step, final, result.success(new_task, AXIS),
                       outcomes(result, retention_tasks), outcomes(pi0, retention_tasks), predictors, result,
                       new_outcomes=outcomes(result, [new_task])[new_task],
                       arm=f"{method}_{re.sub(r'_s[0-9]+$', '', setting)}" if method != "pi0" else "pi0")
