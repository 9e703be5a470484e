"""Policy-inference workers: the acting policy on a Ray actor, weights synced from the learner after each update.

    inference = InferenceWorker.start(policy, device="cuda", gpus=1)
    rollouts = collect_rollouts(policy, env, ..., actor=inference.actor())  # the source does this
    metrics = inference.sync(policy)  # after the update: {"sync/bytes": ..., "sync/seconds": ...}

The worker holds a copy of pi0 (sent once, when it starts). ``sync`` sends the parameters the learner trains
(``policy.trainable_parameters()``): with LoRA and a frozen base, only the adapters and any value head
(OpenVLA-7B rank 32: about 0.2 GB in float32 instead of 15 GB), otherwise every weight. It reports the bytes
sent and the seconds the sync took (the put and the worker's copy, end to end). The collector drives the
worker exactly as it drives a :class:`vla_cl.updaters.data.PolicyActor` in this process: the worker samples
from the same generator state and makes the same calls in the same order, so the episodes are the same
(``tests/test_rollout_workers.py``), torch's CPU kernels being run with this process's thread count.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from vla_cl.policies.base import ObsBatch, Policy

START_TIMEOUT = 120  # seconds to wait for Ray to place the worker and build its policy copy


class PolicyServer:
    """The Ray actor: a policy copy that chooses actions for observations, sampling from its own generator."""

    def __init__(self, policy: Policy, device: str, threads: int):
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.policy = policy.to(self.device)
        self.generator: torch.Generator | None = None
        self.greedy, self.temperature = False, 1.0

    def pid(self) -> int:
        return os.getpid()

    def load(self, tensors: dict[str, torch.Tensor], training: bool) -> int:
        params = dict(self.policy.named_parameters())
        unknown = sorted(set(tensors) - set(params))
        if unknown:
            raise ValueError(f"the learner sent weights this worker's policy does not have: {unknown[:3]}")
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        self.policy.train(training)
        return len(tensors)

    def start(self, state: torch.Tensor | None, greedy: bool, temperature: float) -> None:
        self.generator = None if state is None else torch.Generator().manual_seed(0)
        if state is not None:
            self.generator.set_state(state)
        self.greedy, self.temperature = greedy, temperature

    def get_state(self) -> torch.Tensor | None:
        return None if self.generator is None else self.generator.get_state()

    def set_state(self, state: torch.Tensor | None) -> None:
        if state is not None:
            self.generator.set_state(state)

    def act(self, observations: list[dict]) -> tuple[np.ndarray, torch.Tensor]:
        obs = ObsBatch.from_observations(observations).to(self.device)
        sample = self.policy.generate(obs, greedy=self.greedy, temperature=self.temperature, generator=self.generator)
        return sample.actions, sample.tokens.cpu()


class RemoteActor:
    """The collector's callable for a :class:`PolicyServer`: observation dicts -> actions, keeping the tokens
    it chose for each slot, like ``PolicyActor``."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.tokens: torch.Tensor | None = None

    def start(self, generator: torch.Generator | None, greedy: bool, temperature: float = 1.0) -> None:
        import ray

        ray.get(self.handle.start.remote(None if generator is None else generator.get_state(), greedy, temperature))

    def get_state(self) -> torch.Tensor | None:
        import ray

        return ray.get(self.handle.get_state.remote())

    def set_state(self, state: torch.Tensor | None) -> None:
        import ray

        ray.get(self.handle.set_state.remote(state))

    def __call__(self, observations: list[dict]) -> np.ndarray:
        import ray

        actions, self.tokens = ray.get(self.handle.act.remote(observations))
        return actions


class InferenceWorker:
    """One policy-inference worker (see the module docstring)."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.syncs: list[tuple[int, float]] = []  # (bytes, seconds) of every sync

    @classmethod
    def start(cls, policy: Policy, *, device: str = "cpu", cpus: float = 1.0, gpus: float = 0.0) -> InferenceWorker:
        import ray

        if not ray.is_initialized():
            from vla_cl import workers as jobs

            jobs.start_ray(jobs.current(), max(1, int(np.ceil(cpus))))
        server = ray.remote(PolicyServer).options(num_cpus=cpus, num_gpus=gpus)
        handle = server.remote(policy, device, torch.get_num_threads())
        try:
            ray.get(handle.pid.remote(), timeout=START_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            ray.kill(handle, no_restart=True)
            free = ray.available_resources()
            raise ValueError(f"invalid value for rollout.inference: worker, but Ray cannot place an inference worker "
                             f"of {cpus:g} CPU(s) and {gpus:g} GPU(s) within {START_TIMEOUT} s (free now: "
                             f"{free.get('CPU', 0):g} CPUs, {free.get('GPU', 0):g} GPUs); free resources, add a "
                             "node, or use rollout.inference=learner") from None
        return cls(handle)

    def actor(self) -> RemoteActor:
        return RemoteActor(self.handle)

    def sync(self, policy: Policy) -> dict[str, float]:
        """Send the learner's trained weights; returns ``sync/bytes`` and ``sync/seconds``."""
        import ray

        started = time.perf_counter()
        trained = {id(p) for p in policy.trainable_parameters()}
        tensors = {name: p.detach().to("cpu", copy=True) for name, p in policy.named_parameters() if id(p) in trained}
        ray.get(self.handle.load.remote(tensors, policy.training))
        seconds = time.perf_counter() - started
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        self.syncs.append((size, seconds))
        return {"sync/bytes": float(size), "sync/seconds": seconds}

    def close(self) -> None:
        import ray

        ray.kill(self.handle, no_restart=True)
