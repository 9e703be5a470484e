"""How well does a predictor explain forgetting? A low-degree polynomial fit and its R^2.

The paper fits forgetting (drop in old-task performance) against each candidate predictor with a
2nd-degree polynomial across many fine-tuning runs and ranks the predictors by R^2; the forward KL on the
new task comes out on top (R^2 ~ 0.96 on ParityMNIST). R^2 here is the usual 1 - SS_res / SS_tot of the
fitted polynomial on the same points (no cross-validation), as in the paper; :func:`fit_trust` adds what
says how far that in-sample number can be trusted on a few points (adjusted and leave-one-out R^2, a
bootstrap interval over the points, Spearman's rank correlation), and :func:`ceiling_of` the noise ceiling:
the R^2 a perfect predictor would reach given each point's measurement noise.
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


# ------------------------------------------------------------------------------------------ the noise ceiling

CEILING_DRAWS = 1000


def binomial_ceiling(forgetting: list[float], accuracies: list[float], n: int, draws: int = CEILING_DRAWS,
                     seed: int = 0) -> dict[str, Any] | None:
    """``noise_ceiling`` for points whose forgetting is pi0's accuracy minus an accuracy measured on the same ``n``
    held-out examples (ParityMNIST's old task): each draw re-measures every accuracy as Binomial(n, a) / n."""
    if len(forgetting) < 3:
        return None
    a = np.clip(np.asarray(accuracies, dtype=float), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    errors = a - rng.binomial(n, a, (draws, a.size)) / n  # forgetting = pi0 - accuracy: its error is -(a* - a)
    variance = float(np.mean((a * (1 - a) + 1.0 / n) / n))  # kept off 0 at accuracies of 0 or 1
    return ceiling_of(list(forgetting), errors, variance)


def ceiling_of(forgetting: list[float], errors: np.ndarray, noise: float) -> dict[str, Any] | None:
    """The noise ceiling from the measured forgetting y (n,), draws of its measurement errors (draws, n) and the mean
    error variance ``noise``.

    The true spread is estimated from the measured one, Var(f) = Var(y) - noise, and each true f_i is y_i shrunk
    towards the mean by sqrt(Var(f) / Var(y)) (the explainable share). Each draw fits the 2nd-degree curve of
    f + e on f, as every predictor's fit is made, and keeps its R^2. Returns the median R^2 with a 90 % interval
    over the draws, the explainable share and the variances. A predictor's R^2 near the ceiling is as good as this
    experiment can show; a ceiling far below 1 means the experiment cannot tell predictors apart by R^2 alone."""
    y = np.asarray(forgetting, dtype=float)
    spread = float(np.var(y, ddof=1))
    explainable = max(0.0, 1.0 - noise / spread) if spread > 0 else 0.0
    truth = y.mean() + (y - y.mean()) * np.sqrt(explainable)
    r2s = []
    for row in errors:
        if explainable == 0.0:
            r2s.append(0.0)
            continue
        try:
            r2s.append(float(fit_forgetting(truth, truth + row, 2).r2))
        except ValueError:
            continue
    if not r2s:
        return None
    low, median, high = np.quantile(r2s, [0.05, 0.5, 0.95])
    return {"r2": float(median), "r2_low": float(low), "r2_high": float(high), "explainable": explainable,
            "noise_variance": noise, "forgetting_variance": spread, "points": int(y.size), "draws": len(r2s)}


def ceiling_words(ceiling: dict[str, Any] | None, r2: Mapping[str, float | None]) -> str:
    """What the noise ceiling says about an R^2 table (predictor -> R^2), in two or three sentences."""
    if ceiling is None:
        return "Too few points for a noise ceiling: no R^2 here can be judged."
    c = ceiling["r2"]
    head = (f"Noise ceiling: a perfect predictor would reach R^2 {c:.2f} (90 % of draws {ceiling['r2_low']:.2f} to "
            f"{ceiling['r2_high']:.2f}) given each point's measurement noise; {ceiling['explainable']:.0%} of the "
            "measured spread of forgetting is more than that noise.")
    if c < 0.5:
        verdict = (" The experiment is too noisy to tell predictors apart by R^2: a low R^2 here is not evidence "
                   "against a predictor.")
    elif c < 0.8:
        verdict = " The experiment can tell a good predictor from a useless one, not close predictors apart."
    else:
        verdict = " The experiment is precise enough to tell predictors apart."
    fitted = {name: value for name, value in r2.items() if value is not None}
    if fitted and c > 0:
        name = max(fitted, key=fitted.get)
        verdict += (f" The best predictor, {name}, reaches {fitted[name]:.2f}, {fitted[name] / c:.0%} of the ceiling"
                    + (" (above it: a 3-parameter curve on few points also fits noise)." if fitted[name] > c else "."))
    return head + verdict
