"""How well does a predictor explain forgetting? A low-degree polynomial fit and its R^2.

The paper fits forgetting (drop in old-task performance) against each candidate predictor with a
2nd-degree polynomial across many fine-tuning runs and ranks the predictors by R^2; the forward KL on the
new task comes out on top (R^2 ~ 0.96 on ParityMNIST). R^2 here is the usual 1 - SS_res / SS_tot of the
fitted polynomial on the same points (no cross-validation), as in the paper; :func:`fit_trust` adds what
says how far that in-sample number can be trusted on a few points (adjusted and leave-one-out R^2, a
bootstrap interval over the points, Spearman's rank correlation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from vla_cl.stats import finite_vector


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """A least-squares polynomial fit y ~ poly(x)."""

    coefficients: np.ndarray  # highest degree first, as numpy.polyval expects
    r2: float  # 1 - SS_res / SS_tot on the fitted points
    degree: int  # polynomial degree
    n: int  # number of points fitted

    def __post_init__(self) -> None:
        if self.degree < 0 or len(self.coefficients) != self.degree + 1:
            raise ValueError(
                f"coefficients must hold degree + 1 = {self.degree + 1} values, got {len(self.coefficients)}"
            )
        if self.n < self.degree + 1:
            raise ValueError(f"n must be >= degree + 1 = {self.degree + 1}, got {self.n}")

    def predict(self, x: Any) -> np.ndarray:
        return np.polyval(self.coefficients, np.asarray(x, dtype=np.float64))


def r_squared(y: np.ndarray, fitted: np.ndarray, weights: np.ndarray | None = None) -> float:
    """1 - SS_res / SS_tot (with ``weights``: both sums weighted, about the weighted mean); undefined (raises)
    when y is constant."""
    w = np.ones_like(y) if weights is None else weights
    ss_tot = float(np.sum(w * (y - np.average(y, weights=w)) ** 2))
    if ss_tot == 0.0:
        raise ValueError(f"y is constant ({float(y[0])}): R^2 is undefined")
    return 1.0 - float(np.sum(w * (y - fitted) ** 2)) / ss_tot


def _polyfit(x: np.ndarray, y: np.ndarray, degree: int, weights: np.ndarray | None) -> np.ndarray:
    """Least squares, each squared residual weighted by ``weights`` (numpy's w multiplies the residual)."""
    return np.polyfit(x, y, degree, w=None if weights is None else np.sqrt(weights))


def fit_forgetting(x: Any, y: Any, degree: int = 2, weights: Any = None) -> FitResult:
    """Fit forgetting ``y`` against predictor ``x`` with a polynomial of ``degree`` and report R^2. ``weights``
    (one per point, > 0; e.g. 1 / each point's sampling variance) make it a weighted least-squares fit whose
    R^2 weighs the points alike."""
    if not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be an int >= 0, got {degree!r}")
    x, y = finite_vector("x", x), finite_vector("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if weights is not None:
        weights = finite_vector("weights", weights)
        if weights.shape != x.shape or (weights <= 0).any():
            raise ValueError(f"weights must hold one value > 0 per point ({x.shape[0]}), got {weights.tolist()}")
    if x.shape[0] < degree + 1:
        raise ValueError(f"a degree-{degree} fit needs at least {degree + 1} points, got {x.shape[0]}")
    if np.ptp(x) == 0.0:
        raise ValueError(f"x is constant ({float(x[0])}): a predictor that never changes cannot be fitted")
    if degree >= np.unique(x).size:
        raise ValueError(
            f"a degree-{degree} fit needs {degree + 1} distinct x values, got {np.unique(x).size}"
        )
    coefficients = _polyfit(x, y, degree, weights)
    return FitResult(coefficients=coefficients, r2=r_squared(y, np.polyval(coefficients, x), weights),
                     degree=degree, n=x.shape[0])


@dataclasses.dataclass(frozen=True)
class FitTrust:
    """How far a fit's in-sample R^2 can be trusted, on n points with p = degree + 1 parameters.

    * ``adjusted_r2``: 1 - (1 - R^2) (n - 1) / (n - p), R^2 less what p parameters win on any n points;
    * ``loo_r2``: 1 - PRESS / SS_tot, each point predicted by the fit to the other n - 1 (leave-one-out);
      negative when the fit predicts new points worse than their mean;
    * ``r2_low``, ``r2_high``: the 2.5 and 97.5 percentiles of R^2 refitted on points resampled with
      replacement (resamples with too few distinct x or a constant y are skipped);
    * ``spearman``: the rank correlation of predictor and forgetting (no fitted curve; ties averaged).
    """

    r2: float
    adjusted_r2: float | None  # None when n <= p
    loo_r2: float | None
    r2_low: float | None
    r2_high: float | None
    spearman: float | None  # None when either side is constant
    n: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_trust(x: Any, y: Any, degree: int = 2, resamples: int = 1000, seed: int = 0, weights: Any = None) -> FitTrust:
    """``fit_forgetting``'s R^2 with the measures of :class:`FitTrust` (raises like ``fit_forgetting``); with
    ``weights`` every measure is the weighted one (the rank correlation stays unweighted)."""
    fit = fit_forgetting(x, y, degree, weights)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    n, p = x.shape[0], degree + 1
    adjusted = 1.0 - (1.0 - fit.r2) * (n - 1) / (n - p) if n > p else None
    loo = None
    if n > p:
        residuals = []
        for i in range(n):
            keep = np.arange(n) != i
            if np.unique(x[keep]).size > degree:
                residuals.append(y[i] - np.polyval(_polyfit(x[keep], y[keep], degree, w[keep]), x[i]))
        if len(residuals) == n:
            loo = 1.0 - float(np.sum(w * np.square(residuals))) / float(np.sum(w * (y - np.average(y, weights=w)) ** 2))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        xs, ys, ws = x[rows], y[rows], w[rows]
        if np.unique(xs).size > degree and np.ptp(ys) > 0:
            draws.append(r_squared(ys, np.polyval(_polyfit(xs, ys, degree, ws), xs), ws))
    low, high = (float(v) for v in np.percentile(draws, [2.5, 97.5])) if len(draws) >= 0.5 * resamples \
        else (None, None)
    return FitTrust(fit.r2, adjusted, loo, low, high, spearman(x, y), n)


def spearman(x: Any, y: Any) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = rankdata(np.asarray(x, dtype=np.float64)), rankdata(np.asarray(y, dtype=np.float64))
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_predictors(
    predictors: Mapping[str, Any], forgetting: Any, degree: int = 2
) -> list[tuple[str, FitResult]]:
    """Fit ``forgetting`` against each predictor; (name, fit) pairs, best R^2 first."""
    if not predictors:
        raise ValueError("predictors must name at least one predictor, got none")
    fits = []
    for name, values in predictors.items():
        try:
            fits.append((name, fit_forgetting(values, forgetting, degree)))
        except ValueError as error:
            raise ValueError(f"predictor {name!r}: {error}") from error
    return sorted(fits, key=lambda item: item[1].r2, reverse=True)
