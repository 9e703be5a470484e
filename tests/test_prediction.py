"""Forgetting predicted from a predictor (``vla_cl.evaluation.prediction``): the fit recovers a known quadratic,
its 95 % prediction interval covers about 95 % of new points drawn from the same law, leave-one-run-out tells a
predictor that carries the law from one that does not, and too little data is refused."""

from __future__ import annotations

import numpy as np
import pytest

from vla_cl.evaluation.prediction import fit_law, leave_one_run_out, prediction_table

LAW = (0.01, 0.05, -0.004)  # forgetting = c0 + c1 x + c2 x^2


def truth(x):
    return LAW[0] + LAW[1] * x + LAW[2] * x ** 2


def sweep(rng, runs=8, per_run=3, noise=0.02):
    points = []
    for r in range(runs):
        for k in range(per_run):
            x = rng.uniform(0, 5)
            points.append({"key": f"run{r}__iter-{k}", "good": x, "bad": rng.uniform(0, 5),
                           "forgetting": truth(x) + rng.normal(0, noise)})
    return points


def test_the_fit_recovers_a_known_quadratic_and_its_interval_covers_new_points():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 5, 400)
    law = fit_law(x, truth(x) + rng.normal(0, 0.02, 400), "good")
    assert law.coefficients == pytest.approx(LAW, abs=0.006) and law.residual_sd == pytest.approx(0.02, rel=0.1)
    covered = []
    for _ in range(300):  # small sweeps, each predicting one new point
        xs = rng.uniform(0, 5, 12)
        small = fit_law(xs, truth(xs) + rng.normal(0, 0.02, 12), "good")
        x0 = rng.uniform(0, 5)
        p = small.predict(x0)
        covered.append(p["low"] <= truth(x0) + rng.normal(0, 0.02) <= p["high"])
    assert 0.90 <= np.mean(covered) <= 0.99
    assert law.predict(9.0)["extrapolated"] and not law.predict(2.0)["extrapolated"]


def test_leave_one_run_out_tells_the_predictor_that_carries_the_law():
    points = sweep(np.random.default_rng(1))
    table = prediction_table(points, ["good", "bad", "absent"])
    good, bad = table["good"], table["bad"]
    assert good["runs"] == 8 and good["points"] == 24 and table["absent"] is None
    assert good["mae"] < 0.5 * bad["mae"] and good["coverage"] >= 0.8


def test_too_few_points_or_a_constant_predictor_is_refused():
    with pytest.raises(ValueError, match="at least 5 points"):
        fit_law([0, 1, 2, 3], [0, 1, 2, 3], "x")
    with pytest.raises(ValueError, match="distinct values"):
        fit_law([1, 1, 1, 2, 2], [0, 1, 2, 3, 4], "x")
    assert leave_one_run_out([{"key": "a__1", "x": 1.0, "forgetting": 0.0}], "x") is None
