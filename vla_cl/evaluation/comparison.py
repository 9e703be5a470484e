"""SFT against RL at matched new-task score, estimated without the winner's curse.

Choosing, within each family, the model that forgot least and then estimating its forgetting on the same
episodes favours the family with more models: the minimum of a few noisy estimates is biased low. Two
comparisons avoid that, both over final models only and both with percentile bootstrap intervals that
resample episodes (jointly for every model: the episodes are paired by example id) and, when an arm was
trained at several seeds, the seeds as well:

* ``split_finding``: the evaluation examples of every task are split in two fixed halves (by their sorted
  ids, alternately). On the *selection* half the level is set (the highest new-task score both families
  reach) and each family's least-forgetting arm reaching it is chosen; on the *estimation* half, which the
  choice never saw, SFT's forgetting minus RL's is estimated, together with the two arms' new-task scores
  there (how well "matched" they are). Unbiased for the chosen pair, at the price of half the episodes.
* ``tradeoff``: each family's trade-off curve is the piecewise-linear interpolation of forgetting against
  new-task score from pi0 (forgetting 0) through every final arm of the family that scores above pi0, sorted
  by new-task score (levels up to pi0's score: 0, pi0 reaches them); at fixed levels SFT's interpolated
  forgetting minus RL's. No model is selected, so every example counts; a level beyond a family's best arm
  is not extrapolated (``defined_in``: the share of bootstrap draws in which a level was within reach).

An *arm* is one method at one setting; its replicas are the same arm at other training seeds (``Point.arm``),
averaged into one curve point. With one seed per arm the bootstrap is over episodes alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RESAMPLES = 4000


def _order(ids: set) -> list:
    """Example ids in a fixed order that does not depend on any outcome (numbers numerically)."""
    return sorted(ids, key=lambda i: (0, i, "") if isinstance(i, (int, np.integer)) else (1, 0, str(i)))


@dataclasses.dataclass
class Panel:
    """Every model's per-example outcomes on the examples all of them ran, as arrays (rows: models, row 0 pi0)."""

    keys: list[str]
    retention: list[np.ndarray]  # per retention task: (models, examples)
    new: np.ndarray  # (models, examples) new-task scores; one column of means where ids are not known

    @classmethod
    def of(cls, pi0: Any, points: Sequence[Any], tasks: Sequence[str]) -> Panel:
        models = [pi0, *points]
        retention = []
        for task in tasks:
            ids = _order(set.intersection(*(set(m.outcomes[task]) for m in models)))
            if not ids:
                raise ValueError(f"{task}: the models share no evaluated example; evaluate them on the same examples")
            retention.append(np.asarray([[m.outcomes[task][i] for i in ids] for m in models], dtype=float))
        if all(m.new_outcomes for m in models):
            ids = _order(set.intersection(*(set(m.new_outcomes) for m in models)))
            new = np.asarray([[m.new_outcomes[i] for i in ids] for m in models], dtype=float)
        else:  # per-example new-task scores unknown: the means, not resampled
            new = np.asarray([[m.new_success] for m in models], dtype=float)
        return cls([m.key for m in models], retention, new)

    def columns(self) -> list[int]:
        return [m.shape[1] for m in [*self.retention, self.new]]

    def values(self, index: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(new-task score, forgetting) of every model on the examples ``index`` picks (one index array per
        retention task, then the new task's; each (examples,) or (draws, examples)), shaped (models[, draws])."""
        kept = [m[:, i].mean(-1) for m, i in zip(self.retention, index)]
        forgetting = np.mean([k[0] - k for k in kept], axis=0)
        return self.new[:, index[-1]].mean(-1), forgetting


def halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The selection half (positions 0, 2, ...) and the estimation half (1, 3, ...) of n ordered examples;
    a single example serves both (nothing to split)."""
    if n < 2:
        return np.arange(n), np.arange(n)
    return np.arange(0, n, 2), np.arange(1, n, 2)


def draws(pool: Sequence[np.ndarray], resamples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Bootstrap resamples of each task's examples, from its ``pool`` of positions: (resamples, len(pool))."""
    return [p[rng.integers(0, len(p), (resamples, len(p)))] for p in pool]


def arm_values(values: np.ndarray, arms: Sequence[Sequence[int]], picks: list[np.ndarray] | None = None) -> np.ndarray:
    """Each arm's value, the mean over its replicas (rows of ``values``); with ``picks`` (``replica_picks``),
    over the replicas drawn for each draw (``values``: (models, draws))."""
    if picks is None:
        return np.asarray([values[np.asarray(rows)].mean(0) for rows in arms])
    return np.asarray([values[p, np.arange(values.shape[1])[:, None]].mean(-1) for p in picks])


def replica_picks(arms: Sequence[Sequence[int]], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """For each arm, ``n`` draws of its replicas with replacement: (n, replicas) model rows."""
    return [np.asarray(rows)[rng.integers(0, len(rows), (n, len(rows)))] for rows in arms]


def interval(estimate: float, samples: np.ndarray, method: str) -> dict[str, Any]:
    finite = samples[np.isfinite(samples)]
    low, high = (float(v) for v in np.percentile(finite, [2.5, 97.5])) if finite.size else (np.nan, np.nan)
    return {"estimate": float(estimate), "low": low, "high": high, "confidence": 0.95, "method": method,
            "defined_in": float(finite.size / max(samples.size, 1))}


def _least_forgetting(new: np.ndarray, forgetting: np.ndarray, arms: list[int], level: float) -> int:
    eligible = [a for a in arms if new[a] >= level - 1e-12]
    return min(eligible, key=lambda a: (forgetting[a], -new[a]))


def _method(seeds: bool, half: str) -> str:
    return f"percentile bootstrap over the {half} examples" + (" and the arms' training seeds" if seeds else "")


def split_finding(panel: Panel, arms: Mapping[str, list[list[int]]], names: Mapping[str, list[str]],
                  resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """SFT's forgetting minus RL's, the pair chosen on one half of the examples and estimated on the other
    (see the module docstring). ``arms[family]``: each arm's model rows; ``names[family]``: the arms' names."""
    split = [halves(n) for n in panel.columns()]
    selection, estimation = [s for s, _ in split], [e for _, e in split]
    new_s, forgetting_s = panel.values(selection)
    families = ("rl", "sft")
    flat = {f: [arm_values(v, arms[f]) for v in (new_s, forgetting_s)] for f in families}
    level = float(min(flat[f][0].max() for f in families))
    chosen = {f: _least_forgetting(*flat[f], list(range(len(arms[f]))), level) for f in families}
    rows = {f: [arms[f][chosen[f]]] for f in families}
    new_e, forgetting_e = panel.values(estimation)
    estimate = {f: (float(arm_values(new_e, rows[f])[0]), float(arm_values(forgetting_e, rows[f])[0]))
                for f in families}
    rng = np.random.default_rng(seed)
    new_b, forgetting_b = panel.values(draws(estimation, resamples, rng))
    picks = {f: replica_picks(rows[f], resamples, rng) for f in families}
    boot = {f: (arm_values(new_b, rows[f], picks[f])[0], arm_values(forgetting_b, rows[f], picks[f])[0])
            for f in families}
    seeds = any(len(a) > 1 for f in families for a in arms[f])
    method = _method(seeds, "estimation-half")
    return {
        "level": level,
        "rl_point": names["rl"][chosen["rl"]], "sft_point": names["sft"][chosen["sft"]],
        "rl_models": [panel.keys[r] for r in rows["rl"][0]], "sft_models": [panel.keys[r] for r in rows["sft"][0]],
        "selection_half": {f: {"new_task": float(flat[f][0][chosen[f]]), "forgetting": float(flat[f][1][chosen[f]])}
                           for f in families},
        "rl_new_task": estimate["rl"][0], "sft_new_task": estimate["sft"][0],
        "rl_forgetting": estimate["rl"][1], "sft_forgetting": estimate["sft"][1],
        "sft_minus_rl": interval(estimate["sft"][1] - estimate["rl"][1], boot["sft"][1] - boot["rl"][1], method),
        "new_task_rl_minus_sft": interval(estimate["rl"][0] - estimate["sft"][0], boot["rl"][0] - boot["sft"][0],
                                          method),
        "examples": {"selection": [len(s) for s in selection], "estimation": [len(e) for e in estimation]},
    }


def curve_at(new: np.ndarray, forgetting: np.ndarray, base_new: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """A family's forgetting at ``levels`` along its trade-off curve: 0 up to pi0's own new-task score (pi0 reaches
    those levels), then linear from pi0 through the arms that score above it, sorted by new-task score; NaN beyond
    the best arm. ``new``, ``forgetting``: (arms, draws); ``base_new``: (draws,). Returns (levels, draws)."""
    out = np.full((len(levels), new.shape[1]), np.nan)
    for d in range(new.shape[1]):
        above = new[:, d] > base_new[d]
        order = np.argsort(new[above, d], kind="stable")
        xs = np.concatenate([[base_new[d]], new[above, d][order]])
        ys = np.concatenate([[0.0], forgetting[above, d][order]])
        for i, level in enumerate(levels):
            if level <= xs[0]:
                out[i, d] = 0.0
            elif level <= xs[-1] + 1e-12:
                out[i, d] = np.interp(level, xs, ys)
    return out


def tradeoff(panel: Panel, arms: Mapping[str, list[list[int]]], levels: Sequence[float], resamples: int = 1000,
             seed: int = 0) -> dict[str, Any]:
    """SFT's minus RL's forgetting at fixed new-task levels along the interpolated trade-off curves (see the
    module docstring): per level, each family's forgetting and the difference, with intervals."""
    every = [np.arange(n) for n in panel.columns()]
    rng = np.random.default_rng(seed)
    new, forgetting = panel.values(every)
    new_b, forgetting_b = panel.values(draws(every, resamples, rng))
    families = ("rl", "sft")
    point = {f: curve_at(arm_values(new[:, None], arms[f]), arm_values(forgetting[:, None], arms[f]),
                         new[:1], levels)[:, 0] for f in families}
    boot = {}
    for f in families:
        picks = replica_picks(arms[f], resamples, rng)
        boot[f] = curve_at(arm_values(new_b, arms[f], picks), arm_values(forgetting_b, arms[f], picks), new_b[0],
                           levels)
    seeds = any(len(a) > 1 for f in families for a in arms[f])
    method = _method(seeds, "evaluation")
    rows = []
    for i, level in enumerate(levels):
        row = {"level": float(level), "reached": bool(all(np.isfinite(point[f][i]) for f in families))}
        for f in families:
            row[f] = None if not np.isfinite(point[f][i]) else interval(point[f][i], boot[f][i], method)
        row["sft_minus_rl"] = (interval(point["sft"][i] - point["rl"][i], boot["sft"][i] - boot["rl"][i], method)
                               if row["reached"] else None)
        rows.append(row)
    return {"levels": rows, "curve": "linear from pi0 through each family's final arms above it, by new-task score"}


def common_top(panel: Panel, arms: Mapping[str, list[list[int]]]) -> float:
    """The highest new-task score both families' arms reach, on every example (rounded to 4 digits)."""
    new = panel.values([np.arange(n) for n in panel.columns()])[0][:, None]
    return round(float(min(arm_values(new, arms[f])[:, 0].max() for f in ("rl", "sft"))), 4)


def verdict(difference: Mapping[str, float]) -> bool | None:
    """True when the interval of SFT minus RL lies above 0, False below, None when it contains 0."""
    return True if difference["low"] > 0 else False if difference["high"] < 0 else None


def group_arms(points: Sequence[Any], family: str) -> tuple[list[list[int]], list[str]]:
    """The final models of ``family`` grouped into arms (``Point.arm``): model rows (1-based: row 0 is pi0 in
    the panel) and each arm's name (its first replica's key when it has one seed)."""
    groups: dict[str, list[int]] = {}
    keys: dict[str, list[str]] = {}
    for row, p in enumerate(points, start=1):
        if p.family == family and p.final:
            groups.setdefault(p.arm, []).append(row)
            keys.setdefault(p.arm, []).append(p.key)
    names = [keys[a][0] if len(keys[a]) == 1 else a for a in groups]
    return list(groups.values()), names
