"""The forgetting law, for any experiment: fits, Pareto frontiers and the paper's finding at matched new-task score.

Robots (``vla_cl.razor``) and language models (``vla_cl.llm_track``) analyse their sweeps with this one module.
A *point* is one evaluated model (a final one or a mid-training snapshot): its new-task score (and, where known,
each new-task example's), its per-example outcomes on each retention task (``outcomes[task][example id]``: a robot
episode's success keyed by its reset seed, an LLM benchmark item's score keyed by its id), forgetting = the mean
over retention tasks of pi0's score minus the model's on the examples both ran, and every predictor
(``vla_cl.kl.compare.PREDICTORS``).

* ``r2_table``: forgetting fitted against each predictor with a 2nd-degree polynomial across the points,
  R^2 = 1 - SS_res / SS_tot on the fitted points (the paper's protocol; ``vla_cl.kl.fit_forgetting``);
  ``r2_trust_table`` beside it: adjusted and leave-one-out R^2, a bootstrap interval over the points and
  Spearman's rank correlation (``vla_cl.kl.fit.fit_trust``), for fits of a 3-parameter curve on a few points,
  and the same fit weighted by each point's sampling noise (``forgetting_variance``: points measured on
  fewer episodes, such as 16-episode snapshots, count less than 50-episode final ones).
* ``noise_ceiling``: the R^2 a perfect predictor would reach given each point's measurement noise (a
  parametric bootstrap of its episodes), so a low R^2 can be read: near the ceiling is as good as the
  experiment can show; a ceiling far below 1 means the experiment cannot tell predictors apart.
* ``pareto``: the points of a family no other point of it beats on both new-task score and mean retention.
* ``matched`` (final models only): at a level a, a family's forgetting is that of its final model with
  new-task score >= a that forgot least (pi0 counts for a <= its own score: forgetting 0), with the paired
  stratified bootstrap interval against pi0 (``vla_cl.stats``). A description of the sweep: the choice and
  its estimate share episodes, so a family with more models looks better (the comparison below avoids it).
* ``finding`` (final models only; ``vla_cl.evaluation.comparison``): SFT's forgetting minus RL's, the pair
  chosen on one half of the evaluation examples and estimated on the other, and along each family's
  interpolated trade-off curve at fixed levels. The paper's finding (SFT forgets more than RL at matched
  new-task performance) holds if the held-out interval lies above 0, is reversed if it lies below 0, and is
  not resolved if it contains 0. The older estimate, choosing and estimating on the same episodes, is kept
  beside it (``same_episodes``) to compare with earlier reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from vla_cl.evaluation import comparison as C
from vla_cl.evaluation.prediction import prediction_table
from vla_cl.kl import fit_forgetting
from vla_cl.kl.compare import PREDICTORS
from vla_cl.kl.fit import CEILING_DRAWS, ceiling_of, ceiling_words, fit_trust
from vla_cl.stats import Interval, paired_bootstrap_mean_difference

Outcomes = Mapping[str, Mapping[Hashable, float]]  # retention task -> example id -> score in [0, 1]


@dataclasses.dataclass
class Point:
    key: str  # e.g. "ppo_lr0p001/final" or "pi0"
    method: str
    family: str  # rl, sft, hybrid, pi0
    setting: str
    step: int  # the training step the model is from (final: the last)
    final: bool
    new_success: float  # the new-task score (success rate, mean reward)
    outcomes: Outcomes
    forgetting: float
    predictors: dict[str, float]
    result: Any = None  # the evaluation the outcomes came from (robots: a SuiteResult)
    new_outcomes: Mapping[Hashable, float] | None = None  # each new-task example's score (None: unknown)
    arm: str = ""  # what replicas share (method and setting without the training seed); default: the key

    def __post_init__(self) -> None:
        self.arm = self.arm or self.key

    @property
    def retention(self) -> dict[str, float]:
        return {task: float(np.mean(list(scores.values()))) for task, scores in self.outcomes.items()}

    @property
    def mean_retention(self) -> float:
        return float(np.mean(list(self.retention.values())))

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "method": self.method, "family": self.family, "setting": self.setting,
                "checkpoint_step": self.step, "final": self.final, "new_task_success": self.new_success,
                "retention": self.retention, "mean_retention": self.mean_retention, "forgetting": self.forgetting,
                **{name: self.predictors.get(name) for name in PREDICTORS}}


def common(first: Mapping[Hashable, float], second: Mapping[Hashable, float], task: str) -> tuple[np.ndarray, np.ndarray]:
    """Both models' scores on the examples both ran, in a fixed (sorted-id) order."""
    shared = sorted(set(first) & set(second), key=str)
    if not shared:
        raise ValueError(f"{task}: the two evaluations share no example; evaluate them on the same examples")
    return (np.asarray([first[i] for i in shared], dtype=float), np.asarray([second[i] for i in shared], dtype=float))


def paired_difference(first: Outcomes, second: Outcomes, tasks: list[str], seed: int = 0) -> Interval:
    """Mean over ``tasks`` of (first's score - second's score), stratified paired bootstrap on shared examples."""
    pairs = [common(first[t], second[t], t) for t in tasks]
    return paired_bootstrap_mean_difference([a for a, _ in pairs], [b for _, b in pairs], seed=seed)


def forgetting(pi0: Outcomes, outcomes: Outcomes, tasks: list[str]) -> float:
    """Mean over tasks of pi0's mean score minus the model's, on the examples both ran."""
    return float(np.mean([np.subtract(*[x.mean() for x in common(pi0[t], outcomes[t], t)]) for t in tasks]))


def make_point(key: str, method: str, family: str, setting: str, step: int, final: bool, new_success: float,
               outcomes: Outcomes, pi0: Outcomes, predictors: dict[str, float], result: Any = None,
               new_outcomes: Mapping[Hashable, float] | None = None, arm: str = "") -> Point:
    tasks = list(outcomes)
    return Point(key, method, family, setting, step, final, float(new_success), outcomes,
                 forgetting(pi0, outcomes, tasks), predictors, result, new_outcomes, arm)


def forgetting_variance(point: Point) -> float:
    """The sampling variance of a point's forgetting from its own episodes: (1/T^2) sum_t p_t (1 - p_t) / n_t over
    its T retention tasks, with p_t = (sum of scores + 1) / (n_t + 2) (the binomial variance of a success rate,
    kept off 0 at rates of 0 or 1; for scores in [0, 1] an upper bound). pi0's own noise is shared by every
    point and left out."""
    terms = []
    for scores in point.outcomes.values():
        n = len(scores)
        p = (sum(scores.values()) + 1.0) / (n + 2.0)
        terms.append(p * (1.0 - p) / n)
    return float(sum(terms) / len(terms) ** 2)


CEILING_KEYS = ("noise_ceiling", "noise_ceiling_final", "noise_ceiling_words")  # in law.json and summary.json


def noise_ceiling(points: list[Point], pi0: Point, draws: int = CEILING_DRAWS, seed: int = 0) -> dict[str, Any] | None:
    """The R^2 a perfect predictor would reach given the points' own measurement noise (None: under 3 points).

    A perfect predictor knows each point's true forgetting f_i; what is fitted is the measured y_i = f_i + e_i,
    where e_i comes from the finite episodes each point was evaluated on. Each draw re-measures every point's
    forgetting on its episodes resampled with replacement (per retention task; pi0's held fixed, as its noise
    is shared by every point) minus its measured forgetting: a draw of e_i (a parametric bootstrap of the
    measurement, ``ceiling_of`` does the rest)."""
    if len(points) < 3:
        return None
    rng = np.random.default_rng(seed)
    errors = np.empty((draws, len(points)))
    for i, point in enumerate(points):
        per_task = []
        for task in point.outcomes:
            base, scores = common(pi0.outcomes[task], point.outcomes[task], task)
            picks = rng.integers(0, scores.size, (draws, scores.size))
            per_task.append(base.mean() - scores[picks].mean(axis=1))
        errors[:, i] = np.mean(per_task, axis=0) - point.forgetting
    return ceiling_of([p.forgetting for p in points], errors, float(np.mean([forgetting_variance(p) for p in points])))


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


def r2_trust_table(points: list[Point]) -> dict[str, dict[str, Any] | None]:
    """For each predictor, how far its R^2 can be trusted (``vla_cl.kl.fit.fit_trust``; None: no fit), and
    under ``weighted`` the same measures of the fit weighted by 1 / ``forgetting_variance``."""
    y = np.asarray([p.forgetting for p in points])
    weights = 1.0 / np.asarray([forgetting_variance(p) for p in points])
    out: dict[str, dict[str, Any] | None] = {}
    for name in PREDICTORS:
        x = np.asarray([p.predictors.get(name, np.nan) for p in points], dtype=float)
        try:
            weighted = fit_trust(x, y, 2, weights=weights).to_dict()
            out[name] = {**fit_trust(x, y, 2).to_dict(),
                         "weighted": {k: weighted[k] for k in ("r2", "adjusted_r2", "loo_r2", "r2_low", "r2_high")}}
        except ValueError:
            out[name] = None
    return out


def fit_curve(points: list[Point], predictor: str = "forward_kl_new") -> dict[str, Any] | None:
    x = np.asarray([p.predictors.get(predictor, np.nan) for p in points], dtype=float)
    y = np.asarray([p.forgetting for p in points])
    try:
        fit = fit_forgetting(x, y, 2)
    except ValueError:
        return None
    return {"predictor": predictor, "coefficients": fit.coefficients.tolist(), "r2": fit.r2, "n": fit.n}


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both new-task score and mean retention, by new-task score."""
    front = [p for p in points if not any(
        (q.new_success >= p.new_success and q.mean_retention >= p.mean_retention)
        and (q.new_success > p.new_success or q.mean_retention > p.mean_retention) for q in points)]
    return sorted(front, key=lambda p: p.new_success)


def least_forgetting(points: list[Point], level: float) -> Point | None:
    """The point with new-task score >= level that forgot least (ties: the higher new-task score)."""
    eligible = [p for p in points if p.new_success >= level - 1e-12]
    return min(eligible, key=lambda p: (p.forgetting, -p.new_success)) if eligible else None


def matched(points: list[Point], pi0: Point, retention_tasks: list[str], levels: list[float]) -> dict[str, Any]:
    """Per family and level: the least-forgetting point reaching the level, with its paired interval vs pi0
    (``points``: the final models; see the module docstring)."""
    out: dict[str, Any] = {"levels": levels, "families": {}}
    for family in sorted({p.family for p in points}):
        rows = []
        for level in levels:
            chosen = least_forgetting([pi0, *[p for p in points if p.family == family]], level)
            if chosen is None:
                rows.append({"level": level, "reached": False})
                continue
            interval = (Interval(0.0, 0.0, 0.0, 0.95, "pi0 itself") if chosen is pi0 else
                        paired_difference(pi0.outcomes, chosen.outcomes, retention_tasks))
            rows.append({"level": level, "reached": True, "point": chosen.key, "new_task_success": chosen.new_success,
                         "forgetting": interval.to_dict()})
        out["families"][family] = rows
    return out


def finding(points: list[Point], pi0: Point, retention_tasks: list[str], score: str = "new-task success",
            retention: str = "mean retention-task success", levels: list[float] | None = None) -> dict[str, Any]:
    """SFT's forgetting minus RL's among final models, without the winner's curse (see the module docstring
    and ``vla_cl.evaluation.comparison``)."""
    finals = [p for p in points if p.final]
    arms = {f: C.group_arms(finals, f) for f in ("rl", "sft")}
    if not arms["rl"][0] or not arms["sft"][0]:
        return {"held": None, "statement": "the sweep lacks an RL or an SFT point; no comparison"}
    panel = C.Panel.of(pi0, finals, retention_tasks)
    rows, names = {f: a[0] for f, a in arms.items()}, {f: a[1] for f, a in arms.items()}
    split = C.split_finding(panel, rows, names)
    held = C.verdict(split["sft_minus_rl"])
    top = C.common_top(panel, rows)
    curve = C.tradeoff(panel, rows, sorted({*(levels or []), round(top, 4)}))
    old = same_episodes(finals, pi0, retention_tasks)
    d = split["sft_minus_rl"]
    top_row = next(r for r in curve["levels"] if abs(r["level"] - round(top, 4)) < 1e-9)
    verdict = {True: "held: SFT forgot more than RL", False: "was reversed: RL forgot more than SFT",
               None: "was not resolved: the interval contains 0"}[held]
    half = split["examples"]["estimation"][0]
    statement = (
        f"At matched {score} (final models), the pair was chosen on one half of the evaluation examples (both "
        f"families reach >= {split['level']:.0%} there) and measured on the other half ({half} per task): "
        f"SFT ({split['sft_point']}, new task {split['sft_new_task']:.0%}) forgot {split['sft_forgetting']:+.3f} and "
        f"RL ({split['rl_point']}, new task {split['rl_new_task']:.0%}) forgot {split['rl_forgetting']:+.3f} of "
        f"pi0's {retention}. SFT minus RL: {d['estimate']:+.3f} (95 % bootstrap interval {d['low']:+.3f} to "
        f"{d['high']:+.3f}). The paper's finding {verdict}."
        + ("" if top_row["sft_minus_rl"] is None else
           f" Along the two trade-off curves (interpolated, every example), at {top_row['level']:.0%} {score}: "
           f"SFT minus RL {top_row['sft_minus_rl']['estimate']:+.3f} ({top_row['sft_minus_rl']['low']:+.3f} to "
           f"{top_row['sft_minus_rl']['high']:+.3f})."))
    return {"held": held, **split, "tradeoff": curve, "same_episodes": old, "statement": statement}


def same_episodes(finals: list[Point], pi0: Point, retention_tasks: list[str]) -> dict[str, Any]:
    """The estimate of earlier reports: at the highest new-task score both families reach, each family's
    least-forgetting final model, chosen and compared on the same episodes (biased towards the chosen pair:
    the winner's curse); kept to compare with them."""
    rl = [p for p in finals if p.family == "rl"]
    sft = [p for p in finals if p.family == "sft"]
    level = min(max(p.new_success for p in rl), max(p.new_success for p in sft))
    best_rl, best_sft = least_forgetting(rl, level), least_forgetting(sft, level)
    difference = paired_difference(best_rl.outcomes, best_sft.outcomes, retention_tasks)
    return {"level": level, "rl_point": best_rl.key, "sft_point": best_sft.key, "rl_forgetting": best_rl.forgetting,
            "sft_forgetting": best_sft.forgetting, "sft_minus_rl": difference.to_dict(),
            "method": "chosen and estimated on the same episodes (biased: kept for comparison)"}


def analyse(pi0: Point, points: list[Point], retention_tasks: list[str], levels: list[float],
            **finding_words: str) -> dict[str, Any]:
    """Everything above for one sweep, as a JSON-ready dict (the report's ``law.json``)."""
    finals = [p for p in points if p.final]
    r2, r2_final = r2_table(points), r2_table(finals)
    ceiling, ceiling_final = noise_ceiling(points, pi0), noise_ceiling(finals, pi0)
    return {
        "pi0": pi0.to_dict(),
        "points": [p.to_dict() for p in points],
        "r2": r2,
        "r2_final": r2_final,
        "r2_trust": r2_trust_table(points),
        "noise_ceiling": ceiling,
        "noise_ceiling_final": ceiling_final,
        "noise_ceiling_words": ceiling_words(ceiling, r2),
        "fit_forward_kl_new": fit_curve(points),
        "prediction": prediction_table([p.to_dict() for p in points], PREDICTORS),
        "pareto": {family: [p.key for p in pareto([q for q in points if q.family == family])]
                   for family in sorted({p.family for p in points})},
        "matched": matched(finals, pi0, retention_tasks, levels),
        "finding": finding(points, pi0, retention_tasks, levels=levels, **finding_words),
        "retention_tasks": retention_tasks,
    }
