"""Batched rollouts: several envs stepped together, with one episode collector for training and evaluation.

Vector envs. :func:`make_vector` builds ``num_envs`` copies of a task as a gymnasium ``SyncVectorEnv``
(in-process, stepped one after another) or ``AsyncVectorEnv`` (one worker process each, ``processes=True``).
Auto-reset is DISABLED by default: a finished sub-env stays finished until it is reset explicitly with a
seed (``reset(seed=[...], options={"reset_mask": mask})``). The collector relies on that, so that
episode ``k`` of a collection always starts from seed ``seed + k`` whether it runs on one env, four
in-process envs or four processes. ``autoreset="next_step"`` / ``"same_step"`` give gymnasium's modes to
code that wants them (then episodes after the first start from unseeded resets).

Episodes. :func:`rollout` runs ``n_episodes`` with ``policy`` on a :class:`VLAEnv` or such a vector env
and returns one :class:`Episode` per episode, in episode order. Every episode ends when the task
terminates (ManiSkill terminates on success) or when the wrapper truncates it at ``max_episode_steps``;
the same wrapper does that for training and evaluation, so both see the same episodes.

Policies. A policy is a callable ``policy(observations) -> actions`` taking a list of observation dicts
(one per env, as :meth:`VLAEnv.step` returns them) and returning a (B, 7) float array of physical actions.
It may define ``reset(slot)``, called right after env ``slot`` starts a new episode (experts use it).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from vla_cl.envs.registry import make

AUTORESET_MODES = {
    "disabled": gym.vector.AutoresetMode.DISABLED,
    "next_step": gym.vector.AutoresetMode.NEXT_STEP,
    "same_step": gym.vector.AutoresetMode.SAME_STEP,
}

Policy = Callable[[list], np.ndarray]


@dataclasses.dataclass
class Episode:
    """What the collector records about one finished episode."""

    index: int  # position in the collection (0..n_episodes-1)
    seed: int  # the reset seed (collection seed + index)
    success: bool  # info["success"] was true at some step (ManiSkill ends the episode then)
    ret: float  # sum of rewards
    length: int  # steps taken
    terminated: bool
    truncated: bool
    clipped_actions: int  # out-of-range actions the env clipped
    instruction: str = ""
    initial_state: str | None = None  # the named start (info["initial_state"] at reset), None: a continuous draw


@dataclasses.dataclass
class Transition:
    """One step as the collector's ``on_step`` callback sees it."""

    slot: int  # which env of the batch
    episode: int  # episode index in the collection
    step: int  # 0-based step within the episode
    obs: dict  # the observation the action was chosen from
    action: np.ndarray  # the physical action sent (before the env's clipping)
    reward: float
    terminated: bool
    truncated: bool
    info: dict  # the info the step returned
    next_obs: dict | None = None  # what the step returned (after a last step: the final obs, pre-reset)


def make_vector(task_id: str, num_envs: int, *, processes: bool = False, autoreset: str = "disabled",
                **options: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``task_id`` stepped together (see the module docstring for auto-reset)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if autoreset not in AUTORESET_MODES:
        raise ValueError(f"autoreset must be one of {sorted(AUTORESET_MODES)}, got {autoreset!r}")
    fns = [functools.partial(make, task_id, **options) for _ in range(num_envs)]
    mode = AUTORESET_MODES[autoreset]
    if processes:
        # Text observations cannot live in shared memory; "spawn" keeps each worker's Vulkan/PhysX state
        # its own instead of inheriting a half-initialised copy from a forked parent.
        return gym.vector.AsyncVectorEnv(fns, shared_memory=False, context="spawn", autoreset_mode=mode)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)


def unbatch(obs: dict, n: int) -> list[dict]:
    """A vector env's batched observation dict -> one dict per sub-env."""
    return [{key: value[i] for key, value in obs.items()} for i in range(n)]


def info_at(infos: dict, i: int) -> dict:
    """Sub-env ``i``'s entries of a vector env's batched info (gymnasium marks presence with ``_key``)."""
    out = {}
    for key, value in infos.items():
        present = infos.get("_" + key)
        if not key.startswith("_") and (present is None or present[i]):
            out[key] = info_at(value, i) if isinstance(value, dict) else value[i]
    return out


class Slots:
    """The collector's view of an env: ``n`` slots reset individually with seeds, stepped together. An env
    that resets and steps slots itself (``reset_slots``, ``step_slots``: ``vla_cl.envs.remote.RayVectorEnv``)
    is used through those."""

    def __init__(self, env: Any):
        self.vector = isinstance(env, gym.vector.VectorEnv)
        self.env = env
        self.n = env.num_envs if self.vector else 1
        self.own = hasattr(env, "reset_slots") and hasattr(env, "step_slots")
        if self.vector and env.metadata.get("autoreset_mode") not in (None, gym.vector.AutoresetMode.DISABLED):
            raise ValueError("rollout needs a vector env with autoreset disabled: make_vector(..., autoreset='disabled')")

    def reset(self, slots: Sequence[int], seeds: Sequence[int | None]) -> dict[int, tuple[dict, dict]]:
        if self.own:
            return self.env.reset_slots(slots, seeds)
        if not self.vector:
            obs, info = self.env.reset(seed=None if seeds[0] is None else int(seeds[0]))
            return {0: (obs, info)}
        mask = np.zeros(self.n, dtype=bool)
        mask[list(slots)] = True
        seed_list: list[int | None] = [None] * self.n
        for slot, seed in zip(slots, seeds):
            seed_list[slot] = None if seed is None else int(seed)
        # The first reset must cover every sub-env (gymnasium batches all their observations).
        options = None if mask.all() else {"reset_mask": mask}
        obs, infos = self.env.reset(seed=seed_list, options=options)
        per_env = unbatch(obs, self.n)
        return {slot: (per_env[slot], info_at(infos, slot)) for slot in slots}

    def step(self, actions: np.ndarray) -> list[tuple[dict, float, bool, bool, dict]]:
        if self.own:
            return self.env.step_slots(actions)
        if not self.vector:
            return [self.env.step(actions[0])]
        obs, rewards, terms, truncs, infos = self.env.step(actions)
        per_env = unbatch(obs, self.n)
        return [(per_env[i], float(rewards[i]), bool(terms[i]), bool(truncs[i]), info_at(infos, i))
                for i in range(self.n)]


class EnvWorkerLost(RuntimeError):
    """An env worker (``vla_cl.envs.remote``) died during a call and has been replaced by a fresh one; the
    collection it was part of must start again."""

    def __init__(self, workers: list[int], slots: list[int], cause: str):
        self.workers, self.slots = workers, slots
        super().__init__(f"env worker(s) {workers} (slots {slots}) died ({cause}) and were replaced")


def rollout(
    policy: Policy,
    env: Any,
    n_episodes: int,
    *,
    seed: int = 0,
    on_step: Callable[[Transition], None] | None = None,
    on_reset: Callable[[int, int, dict, dict], None] | None = None,
    on_restart: Callable[[], None] | None = None,
) -> list[Episode]:
    """Run ``n_episodes`` episodes (episode k from seed ``seed + k``); see the module docstring.

    ``on_reset(slot, episode, obs, info)`` and ``on_step(transition)`` see every reset and step (demo
    recording, videos). Sub-envs with no episode left restart from unrecorded seeds and keep stepping
    with the policy's actions until the last episode ends.

    When an env worker dies (:class:`EnvWorkerLost`; ``env.max_replacements`` times at most), the episodes
    not yet finished are discarded and the collection starts again from its first seed with the policy's
    sampling where it was at the start (``policy.get_state()`` / ``set_state``), so it gives the episodes an
    uninterrupted collection gives; ``on_restart()`` tells the caller to drop what it recorded.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    slots = Slots(env)
    state = policy.get_state() if hasattr(policy, "get_state") else None
    allowed = int(getattr(env, "max_replacements", 0))
    for attempt in range(allowed + 1):
        try:
            return _collect(policy, slots, n_episodes, seed, on_step, on_reset)
        except EnvWorkerLost as lost:
            if attempt == allowed:
                raise RuntimeError(f"{lost}: {allowed + 1} losses in one collection, more than ray.retries="
                                   f"{allowed} allows; see `ray status` and the workers' memory, or run with fewer "
                                   "rollout.env_workers") from None
            print(f"[rollout] {lost}; collecting the {n_episodes} episodes again from seed {seed}", flush=True)
            if state is not None:
                policy.set_state(state)
            if on_restart is not None:
                on_restart()
    raise AssertionError("unreachable")


def _collect(policy: Policy, slots: Slots, n_episodes: int, seed: int, on_step, on_reset) -> list[Episode]:
    episodes: list[Episode | None] = [None] * n_episodes
    current: list[Episode | None] = [None] * slots.n
    observations: list[dict | None] = [None] * slots.n
    next_episode = 0

    def start(free: list[int]) -> None:
        """Start the next episodes on the ``free`` slots; slots with no episode left idle (see below)."""
        nonlocal next_episode
        take = free[: max(0, n_episodes - next_episode)]
        indices = list(range(next_episode, next_episode + len(take)))
        next_episode += len(take)
        if not take and all(ep is None for ep in current):
            return  # the collection is complete
        # A vector env refuses to step a finished sub-env, so a slot with no episode left restarts too
        # (unrecorded, from a seed past the collection's) and idles until the last episode ends.
        seeds = {slot: seed + k for slot, k in zip(take, indices)}
        seeds.update({slot: seed + n_episodes + slot for slot in free[len(take):]})
        results = slots.reset(list(seeds), list(seeds.values()))
        for slot, (obs, _) in results.items():
            observations[slot] = obs
        for slot, k in zip(take, indices):
            obs, info = results[slot]
            current[slot] = Episode(k, seed + k, bool(info.get("success", False)), 0.0, 0, False, False, 0,
                                    str(obs["instruction"]), info.get("initial_state"))
            if hasattr(policy, "reset"):
                policy.reset(slot)
            if on_reset is not None:
                on_reset(slot, k, obs, info)

    start(list(range(slots.n)))
    while any(ep is not None for ep in current):
        batch = [observations[i] for i in range(slots.n)]
        actions = np.asarray(policy(batch), dtype=np.float32).reshape(slots.n, -1)
        finished: list[int] = []
        for slot, (obs, reward, terminated, truncated, info) in enumerate(slots.step(actions)):
            ep = current[slot]
            if ep is None:  # an idle env: when its unrecorded episode ends, it must restart to keep stepping
                observations[slot] = obs
                if terminated or truncated:
                    finished.append(slot)
                continue
            if on_step is not None:
                on_step(Transition(slot, ep.index, ep.length, observations[slot], actions[slot], reward,
                                   terminated, truncated, info, obs))
            ep.length += 1
            ep.ret += reward
            ep.success = ep.success or bool(info.get("success", False))
            ep.clipped_actions = int(info.get("clipped_actions", 0))
            observations[slot] = obs
            if terminated or truncated:
                ep.terminated, ep.truncated = terminated, truncated
                episodes[ep.index] = ep
                current[slot] = None
                finished.append(slot)
        if finished:
            start(finished)
    return [ep for ep in episodes if ep is not None]


def summarize(episodes: Sequence[Episode]) -> dict[str, float]:
    """Success rate, mean return and mean length over a collection."""
    if not episodes:
        raise ValueError("summarize needs at least one episode")
    successes = [e for e in episodes if e.success]
    return {
        "episodes": len(episodes),
        "success_rate": float(np.mean([e.success for e in episodes])),
        "mean_return": float(np.mean([e.ret for e in episodes])),
        "mean_length": float(np.mean([e.length for e in episodes])),
        "mean_success_length": float(np.mean([e.length for e in successes])) if successes else float("nan"),
    }


class RandomPolicy:
    """Uniform random physical actions within the action space (seeded)."""

    def __init__(self, action_space: gym.spaces.Box, seed: int = 0):
        self.low, self.high = action_space.low, action_space.high
        self.rng = np.random.default_rng(seed)

    def get_state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def __call__(self, observations: list) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, size=(len(observations), self.low.shape[0])).astype(np.float32)
