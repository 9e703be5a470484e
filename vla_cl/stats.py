"""Uncertainty for success rates: Wilson intervals and paired bootstrap intervals of differences.

Pure statistics (numpy only), below every layer: recording demonstrations (``vla_cl.envs.demos``) reports
its success rate with the same interval as an evaluation does.

Policies are compared on a few hundred episodes at most, so every success rate and every difference
between two policies needs an interval next to it.

- ``wilson_interval``: the Wilson score interval for one binomial proportion (Wilson 1927, "Probable
  inference, the law of succession, and statistical inference", JASA 22:209-212). Brown, Cai & DasGupta
  (2001, "Interval Estimation for a Binomial Proportion", Statistical Science 16:101-133) recommend it
  over the Wald interval, whose coverage collapses near 0 and 1 -- where robot success rates live.
- ``paired_bootstrap_difference``: mean(a) - mean(b) for two policies run on the same episode seeds,
  with a percentile bootstrap interval (Efron & Tibshirani 1993, "An Introduction to the Bootstrap",
  ch. 13) that resamples episode indices, so both policies' outcomes on one seed stay together. Pairing
  removes the between-seed variance that both policies share (an easy seed is easy for both).
- ``paired_bootstrap_mean_difference``: the same for the mean over tasks of per-task differences,
  resampling episodes within each task independently (a stratified bootstrap: the tasks are fixed, the
  episodes are the random sample).

The percentile interval is the (alpha/2, 1 - alpha/2) quantile pair of the resampled statistics,
with numpy's default (linear) quantile interpolation.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval."""

    estimate: float  # the statistic on the observed data
    low: float  # lower end of the interval
    high: float  # upper end of the interval
    confidence: float  # nominal coverage, in (0, 1)
    method: str  # how the interval was obtained, e.g. "paired percentile bootstrap, 10000 resamples"

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)
        if not self.low <= self.high:
            raise ValueError(f"low must be <= high, got low={self.low} and high={self.high}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")


def _normal_quantile(confidence: float) -> float:
    """z with P(|Z| <= z) = confidence for a standard normal Z (1.959964 for 0.95)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) for ``successes`` out of ``n`` trials.

    With p = successes / n and z the two-sided normal quantile of ``confidence``:
    centre = (p + z^2 / 2n) / (1 + z^2 / n), half-width = z / (1 + z^2 / n) * sqrt(p(1-p)/n + z^2 / 4n^2)
    (Wilson 1927; Brown, Cai & DasGupta 2001, eq. 4). Unlike the Wald interval it is never empty at
    p = 0 or 1 and never leaves [0, 1].
    """
    try:
        successes, n = operator.index(successes), operator.index(n)
    except TypeError as error:
        raise ValueError(f"successes and n must be integers, got {successes!r} and {n!r}") from error
    if n < 1:
        raise ValueError(f"n must be >= 1 (the number of trials), got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes}")
    z = _normal_quantile(confidence)
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n))
    # At p = 0 (or 1) the closed form gives exactly 0 (or 1) up to rounding; pin it there.
    low = 0.0 if successes == 0 else max(0.0, centre - half_width)
    high = 1.0 if successes == n else min(1.0, centre + half_width)
    return low, high


def finite_vector(name: str, values: Any, what: str = "") -> np.ndarray:
    """``values`` as a 1-D float64 array, or a ValueError naming ``name`` (``what`` the values are) and the first
    non-finite entry."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array{' of ' + what if what else ''}, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        index = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite, got {float(array[index])} at index {index}")
    return array


def _outcomes(name: str, values: Any) -> np.ndarray:
    array = finite_vector(name, values, "per-episode outcomes")
    if array.size == 0:
        raise ValueError(f"{name} is empty: it needs at least one episode outcome")
    return array


def _paired_differences(name_a: str, a: Any, name_b: str, b: Any) -> np.ndarray:
    a, b = _outcomes(name_a, a), _outcomes(name_b, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length (one entry per paired episode seed), "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
    return a - b


def _check_resamples(n_resamples: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be an int >= 1 (e.g. 10000), got {n_resamples!r}")


def _resampled_means(differences: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of ``differences`` over ``n_resamples`` draws of n indices with replacement, shape (n_resamples,)."""
    indices = rng.integers(0, differences.shape[0], size=(n_resamples, differences.shape[0]))
    return differences[indices].mean(axis=1)


def _percentile_interval(estimate: float, resampled: np.ndarray, confidence: float, method: str) -> Interval:
    alpha = 1.0 - confidence
    low, high = np.quantile(resampled, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(
        estimate=float(estimate), low=float(low), high=float(high), confidence=confidence, method=method
    )


def paired_bootstrap_difference(
    a: Any, b: Any, *, n_resamples: int = 10000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """mean(a) - mean(b) with a paired percentile bootstrap interval.

    ``a[i]`` and ``b[i]`` are the outcomes (0/1 success or any float score) of two policies on the same
    episode i (same seed). What is resampled: the episode indices 0..n-1, n of them with replacement, in
    each of ``n_resamples`` resamples; each drawn index contributes the pair (a[i], b[i]), so each
    resample's statistic is the mean of the drawn differences a[i] - b[i]. The interval is the
    (alpha/2, 1 - alpha/2) percentile pair of those means, alpha = 1 - confidence. The same ``seed``
    gives the same interval (numpy ``default_rng``).
    """
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    differences = _paired_differences("a", a, "b", b)
    resampled = _resampled_means(differences, n_resamples, np.random.default_rng(seed))
    return _percentile_interval(
        differences.mean(), resampled, confidence, f"paired percentile bootstrap, {n_resamples} resamples"
    )


def paired_bootstrap_mean_difference(
    groups_a: Sequence[Any],
    groups_b: Sequence[Any],
    *,
    n_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean over K tasks of mean(a_k) - mean(b_k), with a stratified paired percentile bootstrap interval.

    ``groups_a[k]`` and ``groups_b[k]`` are task k's paired per-episode outcomes (equal length within a
    task; tasks may differ in length). Every task counts equally, whatever its number of episodes. What
    is resampled: within each task k independently, its episode indices 0..n_k-1, n_k of them with
    replacement, pairs kept together; each resample's statistic is the mean over tasks of the per-task
    mean differences. The tasks themselves are not resampled (they are fixed, not a sample).
    """
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    if len(groups_a) == 0:
        raise ValueError("groups_a is empty: pass one array of episode outcomes per task")
    if len(groups_a) != len(groups_b):
        raise ValueError(
            f"groups_a and groups_b must hold one array per task each, got {len(groups_a)} and {len(groups_b)}"
        )
    rng = np.random.default_rng(seed)
    estimates, resampled = [], np.zeros(n_resamples)
    for task, (a, b) in enumerate(zip(groups_a, groups_b)):
        differences = _paired_differences(f"groups_a[{task}]", a, f"groups_b[{task}]", b)
        estimates.append(differences.mean())
        resampled += _resampled_means(differences, n_resamples, rng)
    return _percentile_interval(
        float(np.mean(estimates)),
        resampled / len(estimates),
        confidence,
        f"stratified paired percentile bootstrap over {len(estimates)} tasks, {n_resamples} resamples",
    )
