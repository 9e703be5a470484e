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
