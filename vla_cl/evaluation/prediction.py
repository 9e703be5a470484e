"""Forgetting predicted from one predictor, with a prediction interval, and how well that works on a sweep.

The law is the reports' fit: forgetting = c0 + c1 x + c2 x^2 by least squares over a sweep's points (final policies
and snapshots), x one predictor's value. A new policy's forgetting at x0 is predicted with the ordinary-least-squares
prediction interval

    y(x0) +- t_{n-3, 0.975} * s * sqrt(1 + f0' (F'F)^-1 f0),    f0 = (1, x0, x0^2),  s^2 = RSS / (n - 3),

which covers a new point's forgetting (its own episode noise included, as the sweep's points have theirs) under
the fit's assumptions: the quadratic is right and the residuals are independent with one variance.

``leave_one_run_out`` checks that on the sweep itself: every run (a trial's final policy with its snapshots,
which share a training trajectory and are not independent) is held out in turn, the law is fitted on the other
runs and predicts the held-out run's points. Its mean absolute error and the share of held-out points inside their
95 % interval (the coverage; 0.95 when the interval is honest) say which predictor a user can trust.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

DEGREE = 2
LEVEL = 0.95
MIN_POINTS = DEGREE + 3  # two residual degrees of freedom at least


@dataclasses.dataclass(frozen=True)
class Law:
    """A fitted quadratic with what its prediction intervals need."""

    predictor: str
    coefficients: tuple[float, ...]  # c0, c1, c2
    residual_sd: float
    inverse_gram: tuple[tuple[float, ...], ...]  # (F'F)^-1
    n: int
    x_range: tuple[float, float]

    def predict(self, x: float, level: float = LEVEL) -> dict[str, float]:
        """The predicted forgetting at ``x`` with its ``level`` prediction interval."""
        from scipy import stats

        f = features(np.asarray([x], dtype=float))[0]
        estimate = float(f @ np.asarray(self.coefficients))
        half = (float(stats.t.ppf(0.5 + level / 2, self.n - DEGREE - 1)) * self.residual_sd
                * float(np.sqrt(1 + f @ np.asarray(self.inverse_gram) @ f)))
        return {"forgetting": estimate, "low": estimate - half, "high": estimate + half, "level": level,
                "extrapolated": not (self.x_range[0] <= x <= self.x_range[1])}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def features(x: np.ndarray) -> np.ndarray:
    return np.stack([x ** k for k in range(DEGREE + 1)], axis=1)


def fit_law(x: Sequence[float], y: Sequence[float], predictor: str) -> Law:
    """Least squares of ``y`` (forgetting) on 1, x, x^2; raises ValueError with fewer than MIN_POINTS points or
    a predictor that does not vary."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < MIN_POINTS or not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)):
        raise ValueError(f"the law for {predictor} needs at least {MIN_POINTS} points with finite values, got "
                         f"{int(np.isfinite(x).sum())}")
    f = features(x)
    gram = f.T @ f
    if np.linalg.matrix_rank(gram) < DEGREE + 1:
        raise ValueError(f"{predictor} takes fewer than {DEGREE + 1} distinct values on the sweep: no quadratic fits")
    inverse = np.linalg.inv(gram)
    coefficients = inverse @ f.T @ y
    residuals = y - f @ coefficients
    sd = float(np.sqrt(residuals @ residuals / (len(x) - DEGREE - 1)))
    return Law(predictor, tuple(map(float, coefficients)), sd, tuple(map(tuple, inverse.tolist())), len(x),
               (float(x.min()), float(x.max())))


def run_of(key: str) -> str:
    """The run a point belongs to: its key up to ``__`` (``ppo_lr0p001__iter-000004`` -> ``ppo_lr0p001``)."""
    return key.split("__")[0]


def usable(points: list[dict], predictor: str) -> list[dict]:
    return [p for p in points if p.get(predictor) is not None and np.isfinite(p[predictor])]


def leave_one_run_out(points: list[dict], predictor: str, level: float = LEVEL) -> dict[str, Any] | None:
    """Hold out each run in turn (see the module docstring); None when too few runs or points to fit."""
    points = usable(points, predictor)
    runs = sorted({run_of(p["key"]) for p in points})
    errors, inside = [], []
    for run in runs:
        train = [p for p in points if run_of(p["key"]) != run]
        try:
            law = fit_law([p[predictor] for p in train], [p["forgetting"] for p in train], predictor)
        except ValueError:
            continue
        for p in (q for q in points if run_of(q["key"]) == run):
            prediction = law.predict(p[predictor], level)
            errors.append(abs(prediction["forgetting"] - p["forgetting"]))
            inside.append(prediction["low"] <= p["forgetting"] <= prediction["high"])
    if not errors:
        return None
    return {"mae": float(np.mean(errors)), "coverage": float(np.mean(inside)), "level": level,
            "points": len(errors), "runs": len(runs)}


def prediction_table(points: list[dict], predictors: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """``leave_one_run_out`` per predictor (the report's "which predictor to trust" table)."""
    return {name: leave_one_run_out(points, name) for name in predictors}
