"""The numpy end-effector controller agrees with ManiSkill's own, and is used by every Panda task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_cl.envs import make
from vla_cl.envs.fast_control import ACCELERATED, _FastEEDeltaPose

pytestmark = pytest.mark.sim


@pytest.mark.parametrize("task", ["maniskill/PickCube-v1", "maniskill/PushCube-v1"])
def test_joint_targets_match_maniskills_controller(task):
    env = make(task)
    try:
        env.reset(seed=3)
        arm = env.sim.agent.controller.controllers["arm"]
        assert getattr(arm, ACCELERATED, False)
        reference = type(arm).set_action  # ManiSkill's own, from the class
        fast = _FastEEDeltaPose(arm)
        rng = np.random.default_rng(0)
        worst = 0.0
        for _ in range(60):
            # varied inputs: inside the box, beyond it (clipped) and rotations longer than 1 (rescaled)
            action = torch.as_tensor(rng.uniform(-1.5, 1.5, (1, 6)).astype(np.float32))
            reference(arm, action)
            expected = arm._target_qpos.clone()
            fast(action)
            worst = max(worst, float((arm._target_qpos - expected).abs().max()))
            env.step(np.concatenate([rng.uniform(-0.05, 0.05, 6), [1.0]]).astype(np.float32))  # move on
        assert worst < 1e-4, worst
    finally:
        env.close()


def test_the_controller_stays_accelerated_after_a_reconfiguring_reset():
    env = make("maniskill/PushCube-v1")
    try:
        env.reset(seed=0, options={"reconfigure": True})
        assert getattr(env.sim.agent.controller.controllers["arm"], ACCELERATED, False)
    finally:
        env.close()


def test_the_grasp_check_matches_maniskills_through_a_grasp():
    """Along expert episodes (free, touching, grasping, carrying), the numpy grasp check returns what
    ManiSkill's Panda.is_grasping returns."""
    from vla_cl.envs.experts import ExpertPolicy
    from vla_cl.envs.vector import rollout

    env = make("maniskill/PickCube-v1")
    try:
        agent = env.sim.agent
        reference = type(agent).is_grasping
        outcomes = []

        def compare(t) -> None:
            fast = bool(agent.is_grasping(env.sim.cube)[0])
            slow = bool(reference(agent, env.sim.cube)[0])
            outcomes.append((fast, slow))

        rollout(ExpertPolicy("maniskill/PickCube-v1", env), env, 3, seed=11, on_step=compare)
        assert all(fast == slow for fast, slow in outcomes)
        assert any(slow for _, slow in outcomes) and not all(slow for _, slow in outcomes)
    finally:
        env.close()
