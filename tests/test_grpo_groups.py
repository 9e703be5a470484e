"""GRPO's groups: each episode is compared with the other episodes from its own initial state.

The updater regroups a batch by position (episodes arrive repeat-major from the collector); here the
batch comes from the collector the training loop uses, with several initial states, and the advantages
are checked against groups formed independently, by the reset seed each episode records, with the mean
and the (population) standard deviation written out in plain Python.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.updater_toy import TASK, register_toy
from vla_cl.envs import make
from vla_cl.envs.vector import make_vector
from vla_cl.policies import get_policy_class
from vla_cl.updaters.registry import make_updater
from vla_cl.updaters.sources import Episodes

EPS = 1e-6  # group_advantages' default


@pytest.fixture(scope="module", autouse=True)
def toy_task():
    register_toy()


def reference(returns: list[float], seeds: list[int], scale: bool) -> list[float]:
    out = []
    for r, s in zip(returns, seeds):
        group = [x for x, t in zip(returns, seeds) if t == s]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / len(group))
        out.append((r - mean) / (std + EPS) if scale else r - mean)
    return out


@pytest.mark.parametrize("num_envs", [1, 2])
@pytest.mark.parametrize("scale", [True, False])
def test_grpo_advantages_group_episodes_by_their_initial_state(num_envs, scale):
    group_size, states = 3, 4
    env = make(TASK) if num_envs == 1 else make_vector(TASK, num_envs)
    policy = get_policy_class("state_token").for_task(
        state_dim=6, action_stats=make(TASK).action_stats, preset="tiny", seed=0,
        instructions=[make(TASK).task_spec.instruction], value_head=False)
    updater = make_updater("grpo", group_size=group_size, episodes=group_size * states, scale=scale)
    source = Episodes.for_updater(updater, policy, demos=None, teacher=None, reward="success", seed=5,
                                  device=torch.device("cpu"))
    rollouts, _ = source.collect(env, iteration=3)
    env.close()

    seeds = rollouts.seeds.tolist()
    assert len(set(seeds)) == states and all(seeds.count(s) == group_size for s in seeds)
    firsts = {}  # each episode's first observation: the same within a group, different across groups
    for e, s in enumerate(seeds):
        first = rollouts.obs.state[int(torch.nonzero(rollouts.episode == e)[0])]
        firsts.setdefault(s, []).append(first)
    assert all(torch.equal(f, group[0]) for group in firsts.values() for f in group)
    assert len({tuple(group[0].tolist()) for group in firsts.values()}) == states

    # Returns with a different spread in every group (a random toy policy mostly fails: all-zero groups
    # would hide a wrong grouping), one group all equal (zero advantages).
    returns = torch.tensor([float((7 * s + 3 * e) % 5) if s != seeds[0] else 1.0 for e, s in enumerate(seeds)])
    rollouts.returns = returns
    advantages = updater.episode_advantages(rollouts)
    expected = reference(returns.tolist(), seeds, scale)
    assert advantages.tolist() == pytest.approx(expected, abs=1e-5)
    assert all(a == 0 for a, s in zip(advantages.tolist(), seeds) if s == seeds[0])
