"""Wilson intervals against rounded reference values and an independent closed form; paired bootstrap intervals
against cases whose answer is known exactly and against an unpaired bootstrap written out here."""

import json
import math

import numpy as np
import pytest

from vla_cl.stats import (
    Interval,
    paired_bootstrap_difference,
    paired_bootstrap_mean_difference,
    wilson_interval,
)

Z95 = 1.959963984540054  # standard normal 0.975 quantile


def wilson_by_quadratic(successes, n, z=Z95):
    """The Wilson interval as the roots p of (p_hat - p)^2 = z^2 p (1 - p) / n (Wilson 1927, eq. 2)."""
    p_hat = successes / n
    a, b, c = 1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


# Four-decimal values worked out from the closed form (Brown, Cai & DasGupta 2001, eq. 4) at z = 1.96.
@pytest.mark.parametrize(
    "successes, n, published",
    [
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (5, 10, (0.2366, 0.7634)),
        (81, 263, (0.2553, 0.3662)),
        (1, 20, (0.0089, 0.2361)),
    ],
)
def test_wilson_matches_published_values_and_the_quadratic_roots(successes, n, published):
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(published, abs=5e-5)
    assert (low, high) == pytest.approx(wilson_by_quadratic(successes, n), abs=1e-12)
    assert 0.0 <= low <= successes / n <= high <= 1.0


def test_wilson_pins_the_ends_and_narrows_with_lower_confidence():
    assert wilson_interval(0, 7)[0] == 0.0 and wilson_interval(7, 7)[1] == 1.0
    z90 = 1.6448536269514722  # standard normal 0.95 quantile
    assert wilson_interval(3, 12, confidence=0.9) == pytest.approx(wilson_by_quadratic(3, 12, z90), abs=1e-12)
    assert np.ptp(wilson_interval(3, 12, confidence=0.9)) < np.ptp(wilson_interval(3, 12))


@pytest.mark.parametrize(
    "successes, n, kwargs, match",
    [
        (0, 0, {}, "n must be >= 1"),
        (5, 4, {}, r"successes must lie in \[0, n\]"),
        (-1, 4, {}, "successes must lie"),
        (2.5, 4, {}, "must be integers"),
        (2, 4, {"confidence": 1.0}, "confidence must lie strictly between 0 and 1"),
    ],
)
def test_wilson_rejects_bad_input(successes, n, kwargs, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(successes, n, **kwargs)


def test_identical_policies_give_zero_and_a_degenerate_interval():
    a = np.random.default_rng(3).integers(0, 2, 50)
    result = paired_bootstrap_difference(a, a.copy())
    assert (result.estimate, result.low, result.high) == (0.0, 0.0, 0.0)


def test_always_succeeds_against_never_succeeds_is_exactly_one():
    result = paired_bootstrap_difference(np.ones(30), np.zeros(30), n_resamples=500)
    assert (result.estimate, result.low, result.high) == (1.0, 1.0, 1.0)
    assert result.confidence == 0.95 and result.method == "paired percentile bootstrap, 500 resamples"


def test_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    first = paired_bootstrap_difference(a, b, seed=7)
    assert first.estimate == pytest.approx(a.mean() - b.mean())
    assert first.low < first.estimate < first.high
    assert paired_bootstrap_difference(a, b, seed=7) == first
    assert paired_bootstrap_difference(a, b, seed=8) != first
    assert json.loads(json.dumps(first.to_dict())) == first.to_dict()


def test_bootstrap_width_matches_the_normal_approximation_for_large_n():
    # For a mean of n iid differences the bootstrap distribution is close to N(mean, sd^2 / n), sd with ddof=0.
    d = np.random.default_rng(1).normal(0.1, 1.0, 400)
    result = paired_bootstrap_difference(d, np.zeros(400), n_resamples=20000)
    half_width = Z95 * d.std() / math.sqrt(400)
    assert (result.high - result.low) / 2 == pytest.approx(half_width, rel=0.05)


def test_pairing_narrows_the_interval_when_outcomes_are_correlated_by_episode():
    rng = np.random.default_rng(2)
    b = rng.integers(0, 2, 200)
    a = b.copy()
    # a also wins 10 episodes that b lost and agrees with b everywhere else.
    a[rng.choice(np.flatnonzero(b == 0), 10, replace=False)] = 1
    paired = paired_bootstrap_difference(a, b, seed=0)
    # Unpaired: resample a's and b's episodes independently, which ignores that episode i is shared.
    draw = np.random.default_rng(0)
    unpaired = a[draw.integers(0, 200, (10000, 200))].mean(1) - b[draw.integers(0, 200, (10000, 200))].mean(1)
    unpaired_low, unpaired_high = np.quantile(unpaired, [0.025, 0.975])
    assert paired.estimate == pytest.approx(0.05)
    assert paired.high - paired.low < 0.5 * (unpaired_high - unpaired_low)
    assert paired.low > 0.0 > unpaired_low  # pairing resolves a difference the unpaired view cannot


def test_stratified_mean_is_the_mean_of_per_task_differences():
    groups_a = [[1, 1, 0, 1], [0, 1], [1, 0, 0, 0, 0]]
    groups_b = [[0, 1, 0, 0], [0, 0], [1, 1, 1, 0, 0]]
    # Per task: (3 - 1) / 4 = 0.5, (1 - 0) / 2 = 0.5, (1 - 3) / 5 = -0.4.
    result = paired_bootstrap_mean_difference(groups_a, groups_b, n_resamples=2000)
    assert result.estimate == pytest.approx((0.5 + 0.5 - 0.4) / 3)
    assert result.estimate != pytest.approx((6 - 5) / 11)  # not the pooled mean over all 11 episodes
    assert result.low <= result.estimate <= result.high
    assert result.method == "stratified paired percentile bootstrap over 3 tasks, 2000 resamples"


def test_stratified_interval_is_exact_when_every_task_is_deterministic():
    result = paired_bootstrap_mean_difference([np.ones(6), np.ones(3)], [np.zeros(6), np.ones(3)])
    assert (result.estimate, result.low, result.high) == (0.5, 0.5, 0.5)


def test_stratified_with_one_task_equals_the_paired_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.integers(0, 2, 40), rng.integers(0, 2, 40)
    single = paired_bootstrap_mean_difference([a], [b], seed=3)
    paired = paired_bootstrap_difference(a, b, seed=3)
    assert single.to_dict() | {"method": None} == pytest.approx(paired.to_dict() | {"method": None})


@pytest.mark.parametrize(
    "a, b, kwargs, match",
    [
        ([1, 0, 1], [1, 0], {}, "a and b must have the same length"),
        ([], [], {}, "a is empty"),
        ([[1, 0]], [[1, 0]], {}, "a must be a 1-D array"),
        ([1, np.nan], [1, 0], {}, "a must be finite"),
        ([1, 0], [1, 0], {"n_resamples": 0}, "n_resamples must be an int >= 1"),
        ([1, 0], [1, 0], {"confidence": 95}, "confidence must lie strictly between 0 and 1"),
    ],
)
def test_paired_bootstrap_rejects_bad_input(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_difference(a, b, **kwargs)


@pytest.mark.parametrize(
    "groups_a, groups_b, match",
    [
        ([], [], "groups_a is empty"),
        ([[1, 0]], [[1, 0], [0, 1]], "one array per task each, got 1 and 2"),
        ([[1, 0], [1, 1, 0]], [[1, 0], [1, 0]], r"groups_a\[1\] and groups_b\[1\] must have the same length"),
        ([[1, 0], []], [[1, 0], []], r"groups_a\[1\] is empty"),
    ],
)
def test_stratified_bootstrap_rejects_bad_input(groups_a, groups_b, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap_mean_difference(groups_a, groups_b)


def test_interval_rejects_reversed_ends():
    with pytest.raises(ValueError, match="low must be <= high"):
        Interval(estimate=0.5, low=0.6, high=0.4, confidence=0.95, method="test")
