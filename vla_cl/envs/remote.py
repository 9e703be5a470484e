"""Environment workers: a task's envs held by Ray actors, stepped together as one vector env.

    env = RayVectorEnv("maniskill/PickCube-v1", num_envs=8, workers=2, options={"obs_mode": "state"})

Each of ``workers`` actors (:class:`EnvWorker`, ``cpus`` CPUs each) owns a contiguous block of the ``num_envs``
slots as an in-process vector env with auto-reset disabled (``vla_cl.envs.vector.make_vector``): worker 0 slots
0..m-1, worker 1 the next ones, and so on. The collector (``vla_cl.envs.vector.rollout``) sees one env of
``num_envs`` slots: each step it sends every worker its slots' actions at once, waits for all of them and reads
the results in slot order. Slot i resets from the seed it would get in-process and steps with the action it
would get in-process, so the episodes equal those of ``make_vector(task, num_envs)`` in this process for the
same seeds (``tests/test_rollout_workers.py``).

A worker that dies (its process killed, out of memory, its node lost) is replaced by a fresh one holding the
same slots, and the call raises :class:`EnvWorkerLost`; ``rollout`` then discards the collection's unfinished
episodes and collects it again from its first seed, with the acting policy's sampling restored to where the
collection began, up to ``max_replacements`` times in one collection. Workers are placed with a Ray placement
group (``placement``: ``pack`` fills nodes one after another, ``spread`` puts workers on different nodes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from vla_cl.envs.vector import EnvWorkerLost, Slots

PLACEMENTS = {"pack": "PACK", "spread": "SPREAD"}
PLACEMENT_TIMEOUT = 60  # seconds to wait for Ray to reserve the workers' CPUs


class EnvWorker:
    """One Ray actor's share of the envs: ``n`` slots of ``task_id`` as an in-process vector env."""

    def __init__(self, task_id: str, n: int, options: dict[str, Any], setup: Callable[..., None] | None,
                 setup_args: tuple):
        from vla_cl.envs.vector import make_vector

        if setup is not None:  # e.g. registering a task that lives outside vla_cl in this worker's process
            setup(*setup_args)
        self.env = make_vector(task_id, n, **options)
        self.n = n

    def pid(self) -> int:
        return os.getpid()

    def spaces(self) -> tuple[gym.Space, gym.Space, dict]:
        return self.env.single_observation_space, self.env.single_action_space, dict(self.env.metadata)

    def reset(self, slots: list[int], seeds: list[int]) -> dict[int, tuple[dict, dict]]:
        """Reset the local ``slots`` from ``seeds``; each slot's (observation, info), as in-process."""
        return Slots(self.env).reset(slots, seeds)

    def step(self, actions: np.ndarray) -> list[tuple[dict, float, bool, bool, dict]]:
        return Slots(self.env).step(actions)

    def call(self, name: str, args: tuple, kwargs: dict) -> tuple:
        return self.env.call(name, *args, **kwargs)

    def close(self) -> None:
        self.env.close()


def split(num_envs: int, workers: int) -> list[range]:
    """The slots of each worker: contiguous blocks, as even as ``num_envs`` allows."""
    sizes = [len(block) for block in np.array_split(np.arange(num_envs), workers)]
    starts = np.cumsum([0, *sizes[:-1]])
    return [range(int(s), int(s) + n) for s, n in zip(starts, sizes)]


class RayVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` slots of ``task_id`` on ``workers`` Ray actors (see the module docstring)."""

    def __init__(self, task_id: str, num_envs: int, workers: int, *, options: dict[str, Any] | None = None,
                 cpus: float = 1.0, placement: str = "pack", max_replacements: int = 2,
                 setup: Callable[..., None] | None = None, setup_args: tuple = ()):
        import ray

        if not 1 <= workers <= num_envs:
            raise ValueError(f"env workers must be 1..num_envs={num_envs}, got {workers}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {sorted(PLACEMENTS)}, got {placement!r}")
        if not ray.is_initialized():
            from vla_cl import workers as jobs

            jobs.start_ray(jobs.current(), max(1, int(np.ceil(workers * cpus))))
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.task_id, self.num_envs, self.blocks = task_id, num_envs, split(num_envs, workers)
        self.max_replacements, self.replaced = max_replacements, 0
        self._args = (dict(options or {}), setup, setup_args)
        self._group = placement_group([{"CPU": cpus}] * workers, strategy=PLACEMENTS[placement])
        try:
            ray.get(self._group.ready(), timeout=PLACEMENT_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
            raise ValueError(f"invalid value for rollout.env_workers: Ray cannot place {workers} env workers of {cpus:g} "
                             f"CPU(s) each ({placement}) within {PLACEMENT_TIMEOUT} s; the cluster has "
                             f"{ray.cluster_resources().get('CPU', 0):g} CPUs. Lower rollout.env_workers or "
                             "rollout.env_worker_cpus, or add nodes") from None
        self._actor = ray.remote(EnvWorker)
        self._strategy = lambda i: PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=i)
        self._cpus = cpus
        self.workers = [self._start(i) for i in range(workers)]
        obs_space, action_space, metadata = ray.get(self.workers[0].spaces.remote())
        self.single_observation_space, self.single_action_space = obs_space, action_space
        self.observation_space = gym.vector.utils.batch_space(obs_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(action_space, num_envs)
        self.metadata = {**metadata, "autoreset_mode": gym.vector.AutoresetMode.DISABLED}

    def _start(self, i: int):
        return self._actor.options(num_cpus=self._cpus, scheduling_strategy=self._strategy(i)).remote(
            self.task_id, len(self.blocks[i]), *self._args)

    def _gather(self, calls: dict[int, Any]) -> dict[int, Any]:
        """Results of one remote call per worker; a dead worker is replaced and :class:`EnvWorkerLost` raised
        once every other worker has answered (none is left mid-call)."""
        import ray

        results, lost, cause = {}, [], ""
        for i, ref in calls.items():
            try:
                results[i] = ray.get(ref)
            except ray.exceptions.RayActorError as error:
                lost.append(i)
                cause = type(error).__name__
        if lost:
            for i in lost:
                ray.kill(self.workers[i], no_restart=True)
                self.workers[i] = self._start(i)
            self.replaced += len(lost)
            raise EnvWorkerLost(lost, [s for i in lost for s in self.blocks[i]], cause)
        return results

    # -- the collector's per-slot interface (vla_cl.envs.vector.Slots uses it when an env has it)

    def reset_slots(self, slots: Sequence[int], seeds: Sequence[int]) -> dict[int, tuple[dict, dict]]:
        wanted: dict[int, tuple[list[int], list[int]]] = {}
        for slot, seed in zip(slots, seeds):
            i = next(k for k, block in enumerate(self.blocks) if slot in block)
            local = wanted.setdefault(i, ([], []))
            local[0].append(slot - self.blocks[i].start)
            local[1].append(int(seed))
        results = self._gather({i: self.workers[i].reset.remote(*local) for i, local in wanted.items()})
        return {self.blocks[i].start + local: value for i, out in results.items() for local, value in out.items()}

    def step_slots(self, actions: np.ndarray) -> list[tuple[dict, float, bool, bool, dict]]:
        actions = np.asarray(actions)
        results = self._gather({i: self.workers[i].step.remote(actions[block.start:block.stop])
                                for i, block in enumerate(self.blocks)})
        return [row for i in range(len(self.blocks)) for row in results[i]]

    # -- the rest of the vector-env interface

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple:
        results = self._gather({i: w.call.remote(name, args, kwargs) for i, w in enumerate(self.workers)})
        return tuple(value for i in range(len(self.workers)) for value in results[i])

    def get_attr(self, name: str) -> tuple:
        return self.call(name)

    def pids(self) -> list[int]:
        import ray

        return ray.get([w.pid.remote() for w in self.workers])

    def reset(self, *, seed: Any = None, options: dict | None = None):
        seeds = seed if isinstance(seed, (list, tuple)) else [None if seed is None else seed + i
                                                              for i in range(self.num_envs)]
        mask = (options or {}).get("reset_mask", np.ones(self.num_envs, dtype=bool))
        slots = [i for i in range(self.num_envs) if mask[i]]
        out = self.reset_slots(slots, [seeds[i] for i in slots])
        return self._batched([out[i][0] for i in slots]), {"per_env": [out[i][1] for i in slots]}

    def step(self, actions: np.ndarray):
        rows = self.step_slots(actions)
        return (self._batched([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                np.array([r[3] for r in rows]), {"per_env": [r[4] for r in rows]})

    def _batched(self, observations: list[dict]) -> Any:
        space = self.single_observation_space
        return gym.vector.utils.concatenate(space, observations,
                                            gym.vector.utils.create_empty_array(space, len(observations)))

    def close(self, **kwargs: Any) -> None:
        import ray

        for worker in getattr(self, "workers", []):
            try:
                ray.get(worker.close.remote())
            except ray.exceptions.RayActorError:
                pass
            ray.kill(worker, no_restart=True)
        self.workers = []
        if getattr(self, "_group", None) is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._group)
            self._group = None
