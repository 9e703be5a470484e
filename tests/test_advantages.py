"""GAE and bootstrapping against hand-computed values, and against the forward-sum definition of GAE."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_cl.updaters.advantages import bootstrap_values, gae, standardize


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def b(values):
    return torch.tensor(values, dtype=torch.bool)


def test_gae_termination_does_not_bootstrap():
    # One 3-step episode that succeeds (terminates) on its last step; V(s_3) = 0.9 must be ignored.
    adv, ret = gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([0.6, 0.7, 0.9]), b([0, 0, 1]), b([0, 0, 1]),
                   gamma=0.9, lam=0.8)
    # deltas: 0.9*0.6-0.5 = 0.04, 0.9*0.7-0.6 = 0.03, 1-0.7 = 0.3; A_t = delta_t + 0.72 A_{t+1}
    assert adv.tolist() == pytest.approx([0.04 + 0.72 * (0.03 + 0.72 * 0.3), 0.03 + 0.72 * 0.3, 0.3])
    assert ret.tolist() == pytest.approx((adv + t([0.5, 0.6, 0.7])).tolist())


def test_gae_truncation_bootstraps_from_the_final_observation():
    # The same episode cut by the time limit: the last delta adds gamma * V(final obs) = 0.9 * 0.9.
    adv, _ = gae(t([0, 0, 1]), t([0.5, 0.6, 0.7]), t([0.6, 0.7, 0.9]), b([0, 0, 0]), b([0, 0, 1]),
                 gamma=0.9, lam=0.8)
    last = 1 + 0.9 * 0.9 - 0.7  # 1.11
    assert adv.tolist() == pytest.approx([0.04 + 0.72 * (0.03 + 0.72 * last), 0.03 + 0.72 * last, last])


def test_two_episodes_do_not_leak_into_each_other():
    rewards, values = t([1, 0, 0, 1]), t([0.1, 0.2, 0.3, 0.4])
    end, terminated, episode = b([0, 1, 0, 1]), b([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    next_values = bootstrap_values(values, t([2.0, 5.0]), end, episode)
    assert next_values.tolist() == [0.2, 2.0, 0.4, 5.0]  # within an episode: next row; at its end: final obs
    adv, ret = gae(rewards, values, next_values, terminated, end, gamma=0.5, lam=0.5)
    # episode 0 (truncated): deltas 1 + 0.5*0.2 - 0.1 = 1.0 and 0.5*2.0 - 0.2 = 0.8
    # episode 1 (terminated, V = 5.0 ignored): deltas 0.5*0.4 - 0.3 = -0.1 and 1 - 0.4 = 0.6
    assert adv.tolist() == pytest.approx([1.0 + 0.25 * 0.8, 0.8, -0.1 + 0.25 * 0.6, 0.6])
    assert ret.tolist() == pytest.approx([1.3, 1.0, 0.35, 1.0])


def test_lambda_one_gives_monte_carlo_returns_and_lambda_zero_td():
    rewards, values = t([0, 0, 1]), t([3.0, -2.0, 7.0])  # arbitrary values: MC returns must not depend on them
    next_values = t([-2.0, 7.0, 0.0])
    _, ret = gae(rewards, values, next_values, b([0, 0, 1]), b([0, 0, 1]), gamma=0.9, lam=1.0)
    assert ret.tolist() == pytest.approx([0.81, 0.9, 1.0])
    _, td = gae(rewards, values, next_values, b([0, 0, 1]), b([0, 0, 1]), gamma=0.9, lam=0.0)
    assert td.tolist() == pytest.approx([0.9 * -2.0, 0.9 * 7.0, 1.0])


def test_time_major_columns_are_independent_streams():
    rewards = t([[0, 1], [1, 0]])
    values = t([[0.5, 0.2], [0.4, 0.3]])
    next_values = t([[0.4, 0.0], [0.6, 0.8]])
    terminated, end = b([[0, 1], [0, 0]]), b([[0, 1], [1, 1]])
    adv, _ = gae(rewards, values, next_values, terminated, end, gamma=0.5, lam=1.0)
    for col in range(2):
        one, _ = gae(rewards[:, col], values[:, col], next_values[:, col], terminated[:, col], end[:, col], 0.5, 1.0)
        assert adv[:, col].tolist() == pytest.approx(one.tolist())


def forward_sum_gae(rewards, values, next_values, terminated, end, gamma, lam):
    """A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l} up to the episode's last row (the definition)."""
    deltas = [r + gamma * (0.0 if term else nv) - v for r, v, nv, term in zip(rewards, values, next_values, terminated)]
    out = []
    for t0 in range(len(rewards)):
        total, weight = 0.0, 1.0
        for u in range(t0, len(rewards)):
            total += weight * deltas[u]
            if end[u]:
                break
            weight *= gamma * lam
        out.append(total)
    return out


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    terminal=st.lists(st.booleans(), min_size=4, max_size=4),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_gae_matches_the_forward_sum_definition(lengths, terminal, gamma, lam, seed):
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    episode = np.repeat(np.arange(len(lengths)), lengths)
    end = np.zeros(n, dtype=bool)
    end[np.cumsum(lengths) - 1] = True
    terminated = end & np.array([terminal[e] for e in episode])
    rewards, values, finals = rng.normal(size=n), rng.normal(size=n), rng.normal(size=len(lengths))
    next_values = bootstrap_values(t(values), t(finals), torch.from_numpy(end), torch.from_numpy(episode))
    adv, ret = gae(t(rewards), t(values), next_values, torch.from_numpy(terminated), torch.from_numpy(end),
                   gamma, lam)
    expected = forward_sum_gae(rewards, values, next_values.tolist(), terminated, end, gamma, lam)
    assert adv.numpy() == pytest.approx(np.array(expected), abs=1e-9)
    assert ret.numpy() == pytest.approx(np.array(expected) + values, abs=1e-9)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="terminated row must also end"):
        gae(t([1.0]), t([0.0]), t([0.0]), b([1]), b([0]), 0.9, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        gae(t([1.0]), t([0.0]), t([0.0]), b([1]), b([1]), 1.5, 0.9)
    with pytest.raises(ValueError, match="lam"):
        gae(t([1.0]), t([0.0]), t([0.0]), b([1]), b([1]), 0.9, -0.1)
    with pytest.raises(ValueError, match="shape"):
        gae(t([1.0, 2.0]), t([0.0]), t([0.0]), b([1]), b([1]), 0.9, 0.9)
    with pytest.raises(ValueError, match="bool"):
        gae(t([1.0]), t([0.0]), t([0.0]), torch.tensor([1]), b([1]), 0.9, 0.9)
    with pytest.raises(ValueError, match="last row must end"):
        bootstrap_values(t([0.0, 1.0]), t([0.0]), b([0, 0]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="exactly on each episode's last row"):
        bootstrap_values(t([0.0, 1.0]), t([0.0, 0.0]), b([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="episode indices"):
        bootstrap_values(t([0.0]), t([0.0]), b([1]), torch.tensor([3]))


def test_standardize():
    out = standardize(t([1.0, 2.0, 3.0, 6.0]), eps=0.0)
    assert out.tolist() == pytest.approx(((np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5)).tolist())
    assert standardize(t([2.0, 2.0])).tolist() == [0.0, 0.0]
