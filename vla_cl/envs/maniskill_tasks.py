"""ManiSkill3 task variants this project adds, registered with ManiSkill under their own ids.

Importing this module imports ManiSkill3; :mod:`vla_cl.envs.panda` imports it only when such a task
is created.

``PickCubeLowGoal-v1`` is PickCube-v1 with the goal height capped at 0.05 m above the resting cube
(ManiSkill draws it uniformly in [0, 0.3] m). It is the razor experiment's new task: close enough to
PickCube that a multi-task base policy starts with some success, different enough that it must learn.
"""

from __future__ import annotations

from vla_cl.envs.maniskill import import_maniskill

import_maniskill()

import torch
from mani_skill.envs.tasks.tabletop.pick_cube import PickCubeEnv
from mani_skill.utils.registration import REGISTERED_ENVS, register_env
from mani_skill.utils.structs.pose import Pose

LOW_GOAL_ID = "PickCubeLowGoal-v1"
HOLD_ID = "PickCubeLowGoal-v2"
HOLD_STEPS = 3
LOW_GOAL_MAX_HEIGHT = 0.05  # m above the resting cube's centre


class PickCubeLowGoalEnv(PickCubeEnv):
    """PickCube whose goal lies at most ``LOW_GOAL_MAX_HEIGHT`` above the resting cube."""

    max_goal_height_cap = LOW_GOAL_MAX_HEIGHT

    def _initialize_episode(self, env_idx, options: dict):
        super()._initialize_episode(env_idx, options)
        # Rescale the height the parent drew uniformly in [0, max_goal_height] onto [0, cap]: the result
        # is uniform on the capped range and draws no extra random numbers, so a seed places the cube
        # and the goal's xy exactly as PickCube-v1 does with that seed.
        goal = self.goal_site.pose.p[env_idx].clone()
        rest = self.cube_half_size
        goal[:, 2] = rest + (goal[:, 2] - rest) * (self.max_goal_height_cap / self.max_goal_height)
        self.goal_site.set_pose(Pose.create_from_pq(goal))


class PickCubeLowGoalHoldEnv(PickCubeLowGoalEnv):
    """PickCubeLowGoal whose success needs the cube held at the goal for ``HOLD_STEPS`` steps."""

    hold_steps = HOLD_STEPS

    def evaluate(self):
        info = super().evaluate()
        holding = info["success"] & info["is_grasped"]
        # evaluate() may run more than once per step (ManiSkill's reset, our layout change): count each
        # control step once, and restart the count with every episode.
        steps = self.elapsed_steps.clone()
        if not hasattr(self, "_held") or self._held.shape != holding.shape:
            self._held, self._counted = torch.zeros_like(steps), torch.full_like(steps, -1)
        new = steps != self._counted
        self._held = torch.where(steps == 0, 0, torch.where(new, torch.where(holding, self._held + 1, 0), self._held))
        self._counted = steps
        info["held_steps"] = self._held.clone()
        info["success"] = self._held >= self.hold_steps
        return info


if LOW_GOAL_ID not in REGISTERED_ENVS:
    register_env(LOW_GOAL_ID, max_episode_steps=50)(PickCubeLowGoalEnv)
if HOLD_ID not in REGISTERED_ENVS:
    register_env(HOLD_ID, max_episode_steps=50)(PickCubeLowGoalHoldEnv)
