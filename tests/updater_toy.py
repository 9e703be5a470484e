"""A seconds-fast stand-in task for the updater tests: the VLAEnv interface without a simulator.

``toy/Reach-v0``: a point starts at the origin and must reach a random target within 0.05 m. The 7-D
physical action moves it by its xyz part (+-0.1 m per step, rotation and gripper ignored); success ends
the episode (terminated), the time limit truncates it. Observations: the instruction, a state vector
[position, 10 * (target - position)] and/or a small image with the target (green) and the point (red).
``register_toy()`` adds it to the task registry (so ``vla_cl.envs.make``, ``make_vector`` and
``vla-cl train task=toy/Reach-v0`` work in this process); ``toy_demos`` writes expert demonstrations in
the ``vla_cl.envs.demos`` format.

``toy/ReachMemory-v0`` is the same task with a simulator's memory, as ManiSkill's physics keeps some across
resets: each ordinary reset since the scene was last built (``reset(options={"reconfigure": True})``, or
creation) shifts the target by 1 cm, so an env's episodes depend on its history unless it is rebuilt.
"""

from __future__ import annotations

import string
from typing import ClassVar

import gymnasium as gym
import numpy as np

from vla_cl.envs.registry import TaskSpec, register

TASK = "toy/Reach-v0"
MEMORY_TASK = "toy/ReachMemory-v0"
INSTRUCTION = "reach the green target"
BOUND = np.array([0.1] * 6 + [1.0], dtype=np.float32)
TOLERANCE = 0.05


class ToyReachEnv(gym.Env):
    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, spec: TaskSpec, options):
        self.task_spec, self.options = spec, options
        self.max_episode_steps = options.max_episode_steps or spec.max_episode_steps
        self.action_space = gym.spaces.Box(-BOUND, BOUND, dtype=np.float32)
        self.action_stats = {"q01": (-BOUND).tolist(), "q99": BOUND.tolist(), "mask": [True] * 6 + [False]}
        spaces = {"instruction": gym.spaces.Text(64, min_length=0, charset=string.printable)}
        if options.obs_mode in ("state", "both"):
            spaces["state"] = gym.spaces.Box(-np.inf, np.inf, (6,), dtype=np.float32)
        if options.obs_mode in ("rgb", "both"):
            side = options.image_size
            spaces["image"] = gym.spaces.Box(0, 255, (side, side, 3), dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.pos = np.zeros(3)
        self.target = np.zeros(3)
        self.steps = 0
        self.memory = spec.task_id == MEMORY_TASK
        self.resets_since_build = 0

    def _pixel(self, point: np.ndarray) -> tuple[int, int]:
        side = self.options.image_size
        scaled = np.clip((point[:2] + 0.3) / 0.6, 0, 1) * (side - 1)
        return int(scaled[1]), int(scaled[0])

    def _obs(self) -> dict:
        obs = {"instruction": INSTRUCTION}
        if "state" in self.observation_space.spaces:
            obs["state"] = np.concatenate([self.pos, 10 * (self.target - self.pos)]).astype(np.float32)
        if "image" in self.observation_space.spaces:
            side = self.options.image_size
            image = np.zeros((side, side, 3), dtype=np.uint8)
            image[self._pixel(self.target)] = (0, 255, 0)
            image[self._pixel(self.pos)] = (255, 0, 0)
            obs["image"] = image
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        rng = np.random.default_rng(seed)
        self.target = rng.uniform(-0.15, 0.15, 3)
        if self.memory:
            self.resets_since_build = 0 if (options or {}).get("reconfigure") else self.resets_since_build + 1
            self.target[0] += 0.01 * self.resets_since_build
        self.pos = np.zeros(3)
        self.steps = 0
        return self._obs(), {"success": False, "clipped_actions": 0, "elapsed_steps": 0}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), -BOUND, BOUND)
        self.pos = self.pos + action[:3]
        self.steps += 1
        distance = float(np.linalg.norm(self.target - self.pos))
        success = distance < TOLERANCE
        truncated = not success and self.steps >= self.max_episode_steps
        info = {"success": success, "clipped_actions": 0, "elapsed_steps": self.steps}
        return self._obs(), 1.0 - distance, success, truncated, info

    def expert_action(self) -> np.ndarray:
        action = np.zeros(7, dtype=np.float32)
        action[:3] = np.clip(self.target - self.pos, -0.1, 0.1)
        action[6] = 1.0
        return action


def make_toy(spec: TaskSpec, options) -> ToyReachEnv:
    return ToyReachEnv(spec, options)


def register_toy() -> str:
    for task_id, what in ((TASK, "reach a point (tests)"), (MEMORY_TASK, "reach a point, with memory (tests)")):
        register(TaskSpec(task_id=task_id, factory="tests.updater_toy:make_toy", backend_id="ToyReach",
                          instruction=INSTRUCTION, max_episode_steps=4, description=what))
    return TASK


def toy_demos(folder, n_episodes: int = 6, obs_mode: str = "state", image_size: int = 32, seed: int = 0):
    """Expert demonstrations of the toy task, written in the ``vla_cl.envs.demos`` format."""
    from vla_cl.envs import make
    from vla_cl.envs.demos import FORMAT_VERSION, STEP_ARRAYS, Demos, recorder, save_demos
    from vla_cl.envs.vector import rollout

    register_toy()
    env = make(TASK, obs_mode=obs_mode, image_size=image_size)
    rows: dict[str, list] = {name: [] for name in ("state", "image", *STEP_ARRAYS)}
    episodes = rollout(lambda observations: env.expert_action()[None], env, n_episodes, seed=seed,
                       on_step=recorder(rows))
    arrays = {name: np.asarray(values, dtype=STEP_ARRAYS[name]) for name, values in rows.items()
              if name in STEP_ARRAYS}
    for name, dtype in (("state", np.float32), ("image", np.uint8)):
        if rows[name]:
            arrays[name] = np.stack(rows[name]).astype(dtype)
    meta = {
        "format_version": FORMAT_VERSION, "task_id": TASK, "instruction": INSTRUCTION,
        "instructions": [INSTRUCTION] * n_episodes, "obs_mode": obs_mode, "state_dim": 6 if rows["state"] else 0,
        "image_size": image_size if rows["image"] else None, "action_stats": env.action_stats,
        "counts": {"episodes": n_episodes, "steps": len(arrays["action"]), "attempts": n_episodes},
        "success_rate": float(np.mean([e.success for e in episodes])),
    }
    return save_demos(Demos(arrays, meta), folder)
