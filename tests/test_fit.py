"""The polynomial fit and predictor ranking, with R^2 worked out by hand."""

import numpy as np
import pytest

from vla_cl.kl import fit_forgetting, rank_predictors


def test_known_quadratic_is_recovered_with_r2_one():
    x = np.linspace(0, 5, 12)
    fit = fit_forgetting(x, 2 * x**2 - 3 * x + 1)
    np.testing.assert_allclose(fit.coefficients, [2.0, -3.0, 1.0], atol=1e-9)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.degree == 2 and fit.n == 12
    np.testing.assert_allclose(fit.predict([10.0]), [171.0], atol=1e-7)


def test_r2_of_a_line_through_zigzag_points_by_hand():
    # slope = 1.0 / 5 = 0.2, intercept = 0.5 - 0.2 * 1.5 = 0.2;
    # residuals -0.2, 0.6, -0.6, 0.2 -> SS_res = 0.8, SS_tot = 1, R^2 = 0.2.
    fit = fit_forgetting([0, 1, 2, 3], [0, 1, 0, 1], degree=1)
    np.testing.assert_allclose(fit.coefficients, [0.2, 0.2], atol=1e-12)
    assert fit.r2 == pytest.approx(0.2, abs=1e-12)


def test_rank_predictors_puts_the_best_first():
    rng = np.random.default_rng(0)
    kl = rng.uniform(0, 3, 30)
    forgetting = 0.1 * kl**2 + 0.05 * kl
    ranked = rank_predictors(
        {"noise": rng.normal(size=30), "kl": kl, "kl_noisy": kl + rng.normal(0, 0.5, 30)}, forgetting
    )
    assert [name for name, _ in ranked] == ["kl", "kl_noisy", "noise"]
    assert ranked[0][1].r2 == pytest.approx(1.0)


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        ([1.0, 1.0, 1.0, 1.0], [0, 1, 2, 3], {}, "x is constant"),
        ([0, 1, 2, 3], [2.0, 2.0, 2.0, 2.0], {}, "y is constant"),
        ([0, 1, 2], [0, 1], {}, "same length"),
        ([0, 1], [0, 1], {}, "at least 3 points"),
        ([0, 0, 1, 1], [0, 1, 2, 3], {}, "distinct"),
        ([0, np.nan, 2], [0, 1, 2], {}, "x must be finite"),
        ([0, 1, 2], [0, 1, 2], {"degree": -1}, "degree"),
    ],
)
def test_degenerate_input_raises_clearly(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_forgetting(x, y, **kwargs)


def test_rank_names_the_predictor_that_failed():
    with pytest.raises(ValueError, match="predictor 'flat'.*x is constant"):
        rank_predictors({"kl": [0, 1, 2, 3], "flat": [5, 5, 5, 5]}, [0, 1, 4, 9])


# ------------------------------------------------------------------------------------------ how far to trust a fit


def test_fit_trust_matches_independent_formulas():
    """Adjusted R^2 by its formula, leave-one-out R^2 by the hat matrix's PRESS (no refits), Spearman by scipy."""
    from scipy.stats import spearmanr

    from vla_cl.kl.fit import fit_trust

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 3, 20)
    y = 0.2 * x**2 - 0.1 * x + rng.normal(0, 0.3, 20)
    trust = fit_trust(x, y, 2, resamples=400)
    n, p = 20, 3
    assert trust.adjusted_r2 == pytest.approx(1 - (1 - trust.r2) * (n - 1) / (n - p))
    design = np.vander(x, 3)
    hat = design @ np.linalg.solve(design.T @ design, design.T)
    residuals = y - hat @ y
    press = np.sum((residuals / (1 - np.diag(hat))) ** 2)
    assert trust.loo_r2 == pytest.approx(1 - press / np.sum((y - y.mean()) ** 2))
    assert trust.spearman == pytest.approx(spearmanr(x, y).statistic)
    assert trust.r2_low < trust.r2 < trust.r2_high and trust.loo_r2 < trust.adjusted_r2 < trust.r2


def test_a_fit_to_noise_is_shown_for_what_it_is():
    """On pure noise a 3-parameter curve through 8 points wins R^2 (p - 1) / (n - 1) = 0.29 on average by its
    parameters alone; the adjusted R^2 averages 0 and the leave-one-out R^2 lies below it."""
    from vla_cl.kl.fit import fit_trust

    rng = np.random.default_rng(0)
    fits = [fit_trust(rng.normal(size=8), rng.normal(size=8), 2, resamples=50) for _ in range(300)]
    assert np.mean([f.r2 for f in fits]) == pytest.approx(2 / 7, abs=0.04)
    assert abs(np.mean([f.adjusted_r2 for f in fits])) < 0.05
    assert np.mean([f.loo_r2 for f in fits]) < -0.3
    exact = fit_trust([0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 4.0, 9.0, 16.0], 2)
    assert exact.r2 == pytest.approx(1.0) and exact.loo_r2 == pytest.approx(1.0)
    assert fit_trust([0.0, 1.0, 2.0], [0.0, 1.0, 4.0], 2).adjusted_r2 is None  # n = p: nothing left to adjust
