"""The matched comparison of SFT and RL without the winner's curse (vla_cl.evaluation.comparison), fits weighted
by each point's noise (vla_cl.kl.fit), and the matched table over final models only."""

from __future__ import annotations

import numpy as np
import pytest

from vla_cl.evaluation import comparison as C
from vla_cl.evaluation import law as L
from vla_cl.kl import fit_forgetting
from vla_cl.kl.fit import binomial_ceiling, ceiling_words, fit_trust

TASKS = ["a", "b", "c"]


def model(key, family, retention, new, final=True, arm=""):
    """A point from explicit per-example outcomes (lists indexed by example id)."""
    outcomes = {t: dict(enumerate(map(float, r))) for t, r in zip(TASKS, retention)}
    return key, family, outcomes, dict(enumerate(map(float, new))), final, arm


def points_of(base, *specs):
    _, _, base_outcomes, base_new, _, _ = base
    pi0 = L.make_point("pi0", "pi0", "pi0", "", 0, True, np.mean(list(base_new.values())), base_outcomes,
                       base_outcomes, {}, new_outcomes=base_new)
    out = [L.make_point(k, f, f, "", 5, final, np.mean(list(n.values())), o, base_outcomes, {}, new_outcomes=n,
                        arm=arm) for k, f, o, n, final, arm in specs]
    return pi0, out


def simulate(rng, arms_rl, arms_sft, n=50, p_old=0.7):
    draw = lambda p: (rng.random(n) < p).astype(float)
    base = model("pi0", "pi0", [draw(p_old) for _ in TASKS], draw(0.1))
    specs = [model(f"rl{i}", "rl", [draw(p_old) for _ in TASKS], draw(0.9)) for i in range(arms_rl)]
    specs += [model(f"sft{i}", "sft", [draw(p_old) for _ in TASKS], draw(0.5)) for i in range(arms_sft)]
    return points_of(base, *specs)


def test_choosing_on_one_half_and_estimating_on_the_other_removes_the_winners_curse():
    # Every model forgets nothing in truth; RL has three arms, all above SFT's one. Choosing RL's least-forgetting
    # arm and estimating on the same episodes makes SFT look worse than RL; the held-out half does not.
    rng = np.random.default_rng(0)
    old, new = [], []
    for _ in range(200):
        pi0, points = simulate(rng, 3, 1)
        panel = C.Panel.of(pi0, points, TASKS)
        found = C.split_finding(panel, {"rl": [[1], [2], [3]], "sft": [[4]]},
                                {"rl": ["rl0", "rl1", "rl2"], "sft": ["sft0"]}, resamples=20)
        old.append(L.same_episodes(points, pi0, TASKS)["sft_minus_rl"]["estimate"])
        new.append(found["sft_minus_rl"]["estimate"])
    assert np.mean(old) > 0.02  # the winner's curse: min of three noisy RL estimates
    assert abs(np.mean(new)) < 0.4 * np.mean(old) and abs(np.mean(new)) < 3 * np.std(new) / np.sqrt(len(new))


def test_the_held_out_estimate_by_hand():
    # 4 examples per task: selection half = ids 0 and 2, estimation half = ids 1 and 3.
    base = model("pi0", "pi0", [[1, 1, 1, 1]] * 3, [0, 0, 0, 0])
    lucky = model("lucky", "rl", [[1, 0, 1, 0]] * 3, [1, 1, 1, 1])  # perfect on the selection half only
    steady = model("steady", "rl", [[0, 1, 1, 1]] * 3, [1, 1, 1, 1])
    sft = model("sft", "sft", [[1, 1, 0, 1]] * 3, [1, 1, 1, 1])
    pi0, points = points_of(base, lucky, steady, sft)
    found = L.finding(points, pi0, TASKS)
    assert found["rl_point"] == "lucky" and found["sft_point"] == "sft"  # chosen on ids 0 and 2
    assert found["selection_half"]["rl"]["forgetting"] == 0.0
    assert found["rl_forgetting"] == pytest.approx(1.0)  # held out: ids 1, 3, where lucky fails both
    assert found["sft_forgetting"] == pytest.approx(0.0)
    assert found["sft_minus_rl"]["estimate"] == pytest.approx(-1.0)
    assert found["new_task_rl_minus_sft"]["estimate"] == 0.0
    # chosen and estimated on all four episodes: steady forgot 1/4, lucky 1/2
    assert found["same_episodes"]["rl_point"] == "steady"
    assert found["same_episodes"]["rl_forgetting"] == pytest.approx(0.25)
    assert "chosen on one half" in found["statement"]


def test_trade_off_curves_interpolate_between_pi0_and_the_arms():
    base = model("pi0", "pi0", [[1] * 10] * 3, [0] * 10)  # pi0: new-task 0 %
    rl = model("rl", "rl", [[1] * 9 + [0]] * 3, [1] * 8 + [0] * 2)  # 80 %, forgets 0.1
    sft_low = model("sft_low", "sft", [[1] * 8 + [0] * 2] * 3, [1] * 4 + [0] * 6)  # 40 %, forgets 0.2
    sft_high = model("sft_high", "sft", [[1] * 6 + [0] * 4] * 3, [1] * 6 + [0] * 4)  # 60 %, forgets 0.4
    pi0, points = points_of(base, rl, sft_low, sft_high)
    panel = C.Panel.of(pi0, points, TASKS)
    arms = {"rl": [[1]], "sft": [[2], [3]]}
    curve = C.tradeoff(panel, arms, [0.0, 0.2, 0.5, 0.6, 0.7], resamples=200)
    rows = {r["level"]: r for r in curve["levels"]}
    assert rows[0.0]["rl"]["estimate"] == 0.0 and rows[0.0]["sft"]["estimate"] == 0.0  # pi0 reaches it
    assert rows[0.2]["rl"]["estimate"] == pytest.approx(0.025)  # a quarter of the way from pi0 to 80 %
    assert rows[0.2]["sft"]["estimate"] == pytest.approx(0.1)
    assert rows[0.5]["sft"]["estimate"] == pytest.approx(0.3)  # halfway between 40 % and 60 %
    assert rows[0.5]["sft_minus_rl"]["estimate"] == pytest.approx(0.3 - 0.0625)
    assert not rows[0.7]["reached"] and rows[0.7]["sft"] is None  # beyond SFT's best arm: not extrapolated
    assert rows[0.5]["sft_minus_rl"]["low"] <= rows[0.5]["sft_minus_rl"]["estimate"] <= rows[0.5]["sft_minus_rl"]["high"]


def test_replicas_of_an_arm_are_averaged_and_their_seeds_resampled():
    rng = np.random.default_rng(3)
    draw = lambda p, n=40: (rng.random(n) < p).astype(float)
    base = model("pi0", "pi0", [draw(0.8) for _ in TASKS], draw(0.1))
    specs = [model("rl_s0", "rl", [draw(0.8) for _ in TASKS], draw(0.6), arm="rl"),
             model("rl_s1", "rl", [draw(0.4) for _ in TASKS], draw(0.6), arm="rl"),
             model("sft_s0", "sft", [draw(0.6) for _ in TASKS], draw(0.6), arm="sft"),
             model("sft_s1", "sft", [draw(0.6) for _ in TASKS], draw(0.6), arm="sft")]
    pi0, points = points_of(base, *specs)
    found = L.finding(points, pi0, TASKS)
    assert found["rl_point"] == "rl" and found["rl_models"] == ["rl_s0", "rl_s1"]
    assert "training seeds" in found["sft_minus_rl"]["method"]
    by_seed = L.finding([p for p in points if p.key.endswith("s0")], pi0, TASKS)
    assert "training seeds" not in by_seed["sft_minus_rl"]["method"]
    width = lambda f: f["sft_minus_rl"]["high"] - f["sft_minus_rl"]["low"]
    assert width(found) > width(by_seed)  # two very different RL seeds widen the interval


def test_the_matched_table_holds_final_models_only():
    base = model("pi0", "pi0", [[1] * 4] * 3, [0] * 4)
    snap = model("snap", "rl", [[1] * 4] * 3, [1] * 4, final=False)  # forgets nothing, never a final model
    final = model("final", "rl", [[1, 1, 1, 0]] * 3, [1] * 4)
    sft = model("sft", "sft", [[1, 1, 0, 0]] * 3, [1] * 4)
    pi0, points = points_of(base, snap, final, sft)
    law = L.analyse(pi0, points, TASKS, [0.5])
    assert law["matched"]["families"]["rl"][0]["point"] == "final"
    assert law["finding"]["rl_point"] == "final"


def test_weighted_fits_weigh_each_point_by_its_noise():
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    y = np.array([0.0, 1.0, 4.0, 9.0, 30.0])  # the last point is far off the parabola
    weights = np.array([1.0, 1.0, 1.0, 1.0, 1e-6])
    fit = fit_forgetting(x, y, 2, weights)
    assert fit.r2 == pytest.approx(1.0, abs=1e-4) and fit.predict(2.0) == pytest.approx(4.0, abs=1e-3)
    plain = fit_forgetting(x, y, 2)
    assert plain.r2 < 0.99
    expected = np.polyfit(x, y, 2, w=np.sqrt(weights))
    np.testing.assert_allclose(fit.coefficients, expected)
    assert fit_trust(x, y, 2, weights=np.ones(5)).r2 == pytest.approx(plain.r2)
    with pytest.raises(ValueError, match="weights"):
        fit_forgetting(x, y, 2, [1, 1, 1, 1, 0])


def test_a_points_variance_counts_its_episodes():
    base = model("pi0", "pi0", [[1] * 50] * 3, [0] * 50)
    final = model("final", "rl", [[1] * 25 + [0] * 25] * 3, [1] * 50)
    _, (point,) = points_of(base, final)
    p = 26 / 52
    assert L.forgetting_variance(point) == pytest.approx(3 * p * (1 - p) / 50 / 9)
    short = model("snap", "rl", [[1] * 8 + [0] * 8] * 3, [1] * 16, final=False)
    _, (snap,) = points_of(base, short)
    assert L.forgetting_variance(snap) > 3 * L.forgetting_variance(point)  # 16 episodes against 50


def test_the_trust_table_weighs_snapshots_less_than_final_models():
    base = model("pi0", "pi0", [[1] * 50] * 3, [0] * 50)
    specs = [model(f"f{i}", "rl", [[1] * (50 - 5 * i) + [0] * (5 * i)] * 3, [1] * 50) for i in range(4)]
    specs.append(model("snap", "rl", [[0] * 16] * 3, [1] * 16, final=False))  # far off the law, 16 episodes
    _, points = points_of(base, *specs)
    for p, kl in zip(points, [0.0, 1.0, 2.0, 3.0, 0.5]):
        p.predictors["forward_kl_new"] = kl
    trust = L.r2_trust_table(points)["forward_kl_new"]
    assert trust["weighted"]["r2"] > trust["r2"]  # the outlying snapshot counts less
    assert set(trust["weighted"]) == {"r2", "adjusted_r2", "loo_r2", "r2_low", "r2_high"}


def _noisy_sweep(rng, truth, episodes, p_old=0.8):
    """pi0 and one point per true forgetting value, each retention task measured on ``episodes`` episodes."""
    draw = lambda p: (rng.random(episodes) < p).astype(float)
    base = model("pi0", "pi0", [draw(p_old) for _ in TASKS], draw(0.1))
    specs = [model(f"p{i}", "rl", [draw(p_old - f) for _ in TASKS], draw(0.5)) for i, f in enumerate(truth)]
    return points_of(base, *specs)


def test_the_noise_ceiling_is_near_1_for_a_wide_spread_on_many_episodes_and_low_for_a_narrow_one_on_few():
    rng = np.random.default_rng(0)
    wide = L.noise_ceiling(*reversed(_noisy_sweep(rng, np.linspace(0.0, 0.6, 10), 400)), draws=300)
    narrow = L.noise_ceiling(*reversed(_noisy_sweep(rng, np.linspace(0.0, 0.05, 10), 16)), draws=300)
    assert wide["r2"] > 0.9 and wide["explainable"] > 0.9
    assert narrow["r2"] < 0.5
    assert wide["r2_low"] <= wide["r2"] <= wide["r2_high"] and wide["points"] == 10 and wide["draws"] == 300
    assert L.noise_ceiling(*reversed(_noisy_sweep(rng, [0.1, 0.2], 50))) is None  # under 3 points


def test_a_perfect_predictors_r2_falls_inside_the_ceilings_interval():
    # calibration: the predictor that knows each point's true forgetting reaches the ceiling, within its interval
    rng = np.random.default_rng(1)
    truth = np.linspace(0.0, 0.2, 12)
    inside, medians, perfect = 0, [], []
    for _ in range(40):
        pi0, points = _noisy_sweep(rng, truth, 50)
        ceiling = L.noise_ceiling(points, pi0, draws=200, seed=int(rng.integers(1 << 30)))
        r2 = fit_forgetting(truth, [p.forgetting for p in points], 2).r2
        inside += ceiling["r2_low"] <= r2 <= ceiling["r2_high"]
        medians.append(ceiling["r2"])
        perfect.append(r2)
    assert inside >= 30  # a 90 % interval; 40 sweeps
    assert abs(np.mean(medians) - np.mean(perfect)) < 0.1


def test_the_binomial_ceiling_matches_the_episode_ceiling_for_binary_outcomes():
    rng = np.random.default_rng(2)
    pi0, points = _noisy_sweep(rng, np.linspace(0.0, 0.3, 10), 100)
    episodes = L.noise_ceiling(points, pi0, draws=400)
    # one task of 300 examples carries the same noise as the mean over three tasks of 100
    accuracies = [p.mean_retention for p in points]
    binomial = binomial_ceiling([p.forgetting for p in points], accuracies, 300, draws=400)
    assert binomial["r2"] == pytest.approx(episodes["r2"], abs=0.05)


def test_the_ceiling_words_say_whether_predictors_can_be_told_apart():
    low = {"r2": 0.3, "r2_low": 0.1, "r2_high": 0.5, "explainable": 0.35}
    high = {"r2": 0.92, "r2_low": 0.85, "r2_high": 0.96, "explainable": 0.95}
    assert "too noisy" in ceiling_words(low, {"forward_kl_new": 0.2, "tv_new": None})
    words = ceiling_words(high, {"forward_kl_new": 0.46, "tv_new": 0.2})
    assert "precise enough" in words and "forward_kl_new, reaches 0.46, 50% of the ceiling" in words
    assert "Too few points" in ceiling_words(None, {})
