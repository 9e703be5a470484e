"""The forgetting law on robots: fits, Pareto frontiers, and the paper's finding at matched new-task success.

A *point* is one evaluated policy (a final policy or a mid-training snapshot): its new-task success and its
success on each retention task (in-distribution axis), forgetting = the mean over retention tasks of pi0's
success minus pi's (episodes paired by seed), and every predictor.

* ``r2``: forgetting fitted against each predictor with a 2nd-degree polynomial across all points, R^2 =
  1 - SS_res / SS_tot on the fitted points (the paper's protocol; ``vla_cl.kl.fit_forgetting``). Snapshot
  points come from fewer episodes than final ones, so they are noisier: ``r2_final`` uses final policies only.
* Pareto frontier per method family (RL, SFT, hybrids): the points no other point of the family beats on
  both new-task success and mean retention.
* Matched new-task success: at a level a, a family's forgetting is that of its point with new-task
  success >= a that forgot least (pi0 counts for a <= pi0's own success: forgetting 0). Its interval is the
  paired stratified bootstrap against pi0 on the episodes both ran (``vla_cl.evaluation.retention``).
* The finding, on final policies only (every axis and the suite's full episodes, so that the selection of
  "the best" is not driven by the noise of a 16-episode snapshot): at the highest new-task success both the
  best RL and the best SFT final policy reach, the least-forgetting policy of each family reaching it, and
  SFT's forgetting minus RL's with the paired bootstrap interval of that difference (both policies ran the
  same episodes). The
  paper's finding (SFT forgets more than RL at matched new-task success) holds here if the interval lies
  above 0, is contradicted if it lies below 0, and is not resolved if it contains 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vla_cl.evaluation.results import CellResult, SuiteResult
from vla_cl.evaluation.stats import Interval, paired_bootstrap_mean_difference
from vla_cl.kl import fit_forgetting
from vla_cl.kl.compare import PREDICTORS

AXIS = "in_distribution"


@dataclasses.dataclass
class Point:
    key: str  # e.g. "ppo_lr0p001/final" or "pi0"
    method: str
    family: str  # rl, sft, hybrid, pi0
    setting: str
    step: int  # the training iteration the policy is from (final: the last)
    final: bool
    result: SuiteResult
    new_success: float
    retention: dict[str, float]
    forgetting: float
    predictors: dict[str, float]

    @property
    def mean_retention(self) -> float:
        return float(np.mean(list(self.retention.values())))

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "method": self.method, "family": self.family, "setting": self.setting,
                "checkpoint_step": self.step, "final": self.final, "new_task_success": self.new_success,
                "retention": self.retention, "mean_retention": self.mean_retention, "forgetting": self.forgetting,
                **{name: self.predictors.get(name) for name in PREDICTORS}}


def _common(a: CellResult, b: CellResult) -> tuple[np.ndarray, np.ndarray]:
    """Success of both cells on the episodes both ran (same reset seeds), in seed order."""
    shared = sorted(set(a.seeds) & set(b.seeds))
    if not shared:
        raise ValueError(f"{a.task}: the two evaluations share no episode; evaluate them on the same seeds")
    pick = lambda c: np.asarray([c.successes[c.seeds.index(s)] for s in shared], dtype=float)
    return pick(a), pick(b)


def paired_difference(first: SuiteResult, second: SuiteResult, tasks: list[str], seed: int = 0) -> Interval:
    """Mean over ``tasks`` of (first's success - second's success), stratified paired bootstrap on shared episodes."""
    pairs = [_common(first.cell(t, AXIS), second.cell(t, AXIS)) for t in tasks]
    return paired_bootstrap_mean_difference([a for a, _ in pairs], [b for _, b in pairs], seed=seed)


def make_point(key: str, method: str, family: str, setting: str, step: int, final: bool, result: SuiteResult,
               pi0: SuiteResult, new_task: str, retention_tasks: list[str], predictors: dict[str, float]) -> Point:
    retention = {t: result.success(t, AXIS) for t in retention_tasks}
    forgetting = float(np.mean([np.subtract(*[x.mean() for x in _common(pi0.cell(t, AXIS), result.cell(t, AXIS))])
                                for t in retention_tasks]))
    return Point(key, method, family, setting, step, final, result, result.success(new_task, AXIS), retention,
                 forgetting, predictors)


def r2_table(points: list[Point]) -> dict[str, float | None]:
    """R^2 of the 2nd-degree fit of forgetting against each predictor (None when it cannot be fitted)."""
    y = np.asarray([p.forgetting for p in points])
    out: dict[str, float | None] = {}
    for name in PREDICTORS:
        x = np.asarray([p.predictors.get(name, np.nan) for p in points], dtype=float)
        try:
            out[name] = float(fit_forgetting(x, y, 2).r2)
        except ValueError:
            out[name] = None
    return out


def fit_curve(points: list[Point], predictor: str = "forward_kl_new") -> dict[str, Any] | None:
    x = np.asarray([p.predictors[predictor] for p in points])
    y = np.asarray([p.forgetting for p in points])
    try:
        fit = fit_forgetting(x, y, 2)
    except ValueError:
        return None
    return {"predictor": predictor, "coefficients": fit.coefficients.tolist(), "r2": fit.r2, "n": fit.n}


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both new-task success and mean retention, by new-task success."""
    front = [p for p in points if not any(
        (q.new_success >= p.new_success and q.mean_retention >= p.mean_retention)
        and (q.new_success > p.new_success or q.mean_retention > p.mean_retention) for q in points)]
    return sorted(front, key=lambda p: p.new_success)


def least_forgetting(points: list[Point], level: float) -> Point | None:
    """The point with new-task success >= level that forgot least (ties: the higher new-task success)."""
    eligible = [p for p in points if p.new_success >= level - 1e-12]
    return min(eligible, key=lambda p: (p.forgetting, -p.new_success)) if eligible else None


def matched(points: list[Point], pi0: Point, retention_tasks: list[str], levels: list[float]) -> dict[str, Any]:
    """Per family and level: the least-forgetting point reaching the level, with its paired interval vs pi0."""
    out: dict[str, Any] = {"levels": levels, "families": {}}
    for family in sorted({p.family for p in points}):
        rows = []
        for level in levels:
            chosen = least_forgetting([pi0, *[p for p in points if p.family == family]], level)
            if chosen is None:
                rows.append({"level": level, "reached": False})
                continue
            interval = (Interval(0.0, 0.0, 0.0, 0.95, "pi0 itself") if chosen is pi0 else
                        paired_difference(pi0.result, chosen.result, retention_tasks))
            rows.append({"level": level, "reached": True, "point": chosen.key, "new_task_success": chosen.new_success,
                         "forgetting": interval.to_dict()})
        out["families"][family] = rows
    return out


def finding(points: list[Point], pi0: Point, retention_tasks: list[str]) -> dict[str, Any]:
    """SFT's forgetting minus RL's at the highest new-task success both reach (see the module docstring)."""
    rl = [p for p in points if p.family == "rl" and p.final]
    sft = [p for p in points if p.family == "sft" and p.final]
    if not rl or not sft:
        return {"held": None, "statement": "the sweep lacks an RL or an SFT point; no comparison"}
    level = min(max(p.new_success for p in rl), max(p.new_success for p in sft))
    best_rl, best_sft = least_forgetting(rl, level), least_forgetting(sft, level)
    # SFT forgetting - RL forgetting = RL retention - SFT retention, on the episodes both ran
    difference = paired_difference(best_rl.result, best_sft.result, retention_tasks)
    held = True if difference.low > 0 else False if difference.high < 0 else None
    verdict = {True: "held: SFT forgot more than RL", False: "was reversed: RL forgot more than SFT",
               None: "was not resolved: the interval contains 0"}[held]
    statement = (
        f"At matched new-task success (final policies; both reach >= {level:.0%}), the least-forgetting SFT policy "
        f"({best_sft.key}, new task {best_sft.new_success:.0%}) forgot {best_sft.forgetting:+.3f} and the "
        f"least-forgetting RL policy ({best_rl.key}, new task {best_rl.new_success:.0%}) forgot "
        f"{best_rl.forgetting:+.3f} of pi0's mean retention-task success. SFT minus RL: {difference.estimate:+.3f} "
        f"(95 % paired bootstrap interval {difference.low:+.3f} to {difference.high:+.3f}). The paper's finding "
        f"{verdict}.")
    return {"held": held, "level": level, "rl_point": best_rl.key, "sft_point": best_sft.key,
            "rl_forgetting": best_rl.forgetting, "sft_forgetting": best_sft.forgetting,
            "sft_minus_rl": difference.to_dict(), "statement": statement}
