"""Where an updater's data comes from each iteration: the policy's own episodes, a teacher's, or demonstrations.

Each updater names its :class:`Source` class (``Updater.source``) and builds one for a run
(``Updater.data_source``); the training loop asks the source, not the updater's name, what a run needs
(``needs_env``, ``needs_demos``, ``needs_teacher``), checks it (``check``) and draws each iteration's raw
data from it (``collect``), so that a new kind of data is a new class here, not another branch in the loop.

Every draw is a pure function of (seed, iteration): episodes start from seeds derived from them and sample
with generators seeded the same way; demonstration batches are rows of a seeded endless stream.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch

from vla_cl.policies.base import Policy
from vla_cl.updaters.data import DemoStream, collect_rollouts
from vla_cl.updaters.seeds import DEMOS, SAMPLE, TRAIN, derived_seed, generator


class Source(abc.ABC):
    """One run's supply of raw data: ``collect`` returns (data for ``Updater.prepare``, metrics to log)."""

    name: ClassVar[str] = ""  # what messages call it
    needs_env: ClassVar[bool] = True  # collects episodes in the task's env (else: an env only evaluates)
    needs_demos: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = False
    remote_inference: ClassVar[bool] = False  # its episodes can be acted by an inference worker

    @classmethod
    @abc.abstractmethod
    def for_updater(cls, updater: Any, policy: Policy, *, demos: Any, teacher: Policy | None, reward: str,
                    seed: int, device: torch.device) -> Source:
        """This source as ``updater`` uses it in one run (its config says how much data an iteration takes)."""

    @abc.abstractmethod
    def check(self, policy: Policy, device: torch.device) -> None:
        """Refuse, before any work, data the policy cannot train on (raises ValueError naming what is wrong)."""

    @abc.abstractmethod
    def collect(self, env: Any, iteration: int) -> tuple[Any, dict[str, float]]:
        """This iteration's raw data and what to log about it (``episodes`` and ``env_steps`` are counted)."""


class Episodes(Source):
    """Episodes of an acting policy on the task: the policy's own (on-policy RL, rft) or a teacher's (distill)."""

    name = "rollouts"
    remote_inference = True

    def __init__(self, actor: Policy, episodes: int, *, repeats: int = 1, reward: str = "success",
                 greedy: bool = False, with_probs: bool = False, seed: int, device: torch.device):
        self.actor, self.episodes, self.repeats, self.reward = actor, episodes, repeats, reward
        self.greedy, self.with_probs, self.seed, self.device = greedy, with_probs, seed, device
        self.inference: Any = None  # a vla_cl.updaters.inference.InferenceWorker acting for the policy
        self.share: Any = None  # a vla_cl.updaters.distributed.Learner whose process collects its own share

    @classmethod
    def for_updater(cls, updater: Any, policy: Policy, *, demos: Any, teacher: Policy | None, reward: str,
                    seed: int, device: torch.device) -> Source:
        return cls(policy, updater.config.episodes, repeats=updater.repeats, reward=reward, seed=seed, device=device)

    def check(self, policy: Policy, device: torch.device) -> None:
        if self.episodes % self.repeats:
            raise ValueError(f"episodes={self.episodes} is not a multiple of the {self.repeats} repeats per "
                             "initial state")

    def collect(self, env: Any, iteration: int) -> tuple[Any, dict[str, float]]:
        synced = self.inference.sync(self.actor) if self.inference is not None else {}  # the last update's weights
        replaced = getattr(env, "replaced", 0)
        states, sampling = range(self.episodes // self.repeats), generator(self.seed, SAMPLE, iteration)
        if self.share is not None:  # this process's initial states of the iteration, sampled on its own stream
            states = self.share.share(len(states))
            sampling = torch.Generator().manual_seed(derived_seed(self.seed, SAMPLE, iteration) + 7919 * self.share.rank)
        rollouts = collect_rollouts(
            self.actor, env, len(states), derived_seed(self.seed, TRAIN, iteration) + states.start,
            sampling, repeats=self.repeats, reward=self.reward, greedy=self.greedy,
            with_probs=self.with_probs, device=self.device,
            actor=None if self.inference is None else self.inference.actor())
        summary = rollouts.summary()
        if hasattr(env, "replaced"):  # env workers (vla_cl.envs.remote) lost and replaced during this collection
            synced["rollout/env_workers_replaced"] = env.replaced - replaced
        return rollouts, {**synced,
            "episodes": summary["episodes"],
            "env_steps": summary["env_steps"],
            "rollout/success_rate": summary["success_rate"],
            "rollout/return": summary["return"],
            "rollout/length": summary["length"],
        }


class TeacherEpisodes(Episodes):
    """A teacher's episodes with its token distributions at every step (what distillation learns)."""

    name = "a teacher's rollouts"
    needs_teacher = True
    remote_inference = False  # the teacher acts in the learner's process

    def __init__(self, teacher: Policy | None, episodes: int, **options: Any):
        if teacher is None:
            raise ValueError("this updater learns from a teacher's rollouts: pass teacher=PATH")
        super().__init__(teacher, episodes, with_probs=True, **options)

    @classmethod
    def for_updater(cls, updater: Any, policy: Policy, *, demos: Any, teacher: Policy | None, reward: str,
                    seed: int, device: torch.device) -> Source:
        """``updater.config.teacher_greedy`` says whether the teacher acts greedily."""
        return cls(teacher, updater.config.episodes, repeats=updater.repeats, reward=reward,
                   greedy=updater.config.teacher_greedy, seed=seed, device=device)

    def check(self, policy: Policy, device: torch.device) -> None:
        super().check(policy, device)
        check_same_actions(policy, self.actor)


class Demonstrations(Source):
    """Batches of a demonstration set (``vla-cl demos``), ``batch_size`` rows an iteration."""

    name = "demonstrations"
    needs_env = False
    needs_demos = True

    def __init__(self, demos: Any, policy: Policy, batch_size: int, *, seed: int):
        if demos is None:
            raise ValueError("this updater learns from demonstrations: pass demos (demos=PATH)")
        self.stream = DemoStream(demos, policy, batch_size, derived_seed(seed, DEMOS))

    @classmethod
    def for_updater(cls, updater: Any, policy: Policy, *, demos: Any, teacher: Policy | None, reward: str,
                    seed: int, device: torch.device) -> Source:
        return cls(demos, policy, updater.config.batch_size, seed=seed)

    def check(self, policy: Policy, device: torch.device) -> None:
        first = self.stream.obs.select([0]).to(device)
        with torch.no_grad():  # the policy's own checks name what the demonstrations lack (state, image)
            policy.action_logits(first, self.stream.tokens[:1].to(device))

    def collect(self, env: Any, iteration: int) -> tuple[Any, dict[str, float]]:
        return self.stream.batch(iteration - 1), {}


def check_same_actions(policy: Policy, teacher: Policy) -> None:
    """Tokens mean the same physical actions for both policies (same bins and statistics)."""
    a, b = policy.tokenizer, teacher.tokenizer
    same_stats = (a.stats is None) == (b.stats is None) and (a.stats is None or (
        np.array_equal(a.stats.q01, b.stats.q01) and np.array_equal(a.stats.q99, b.stats.q99)
        and np.array_equal(a.stats.mask, b.stats.mask)))
    if (a.n_bins, a.vocab_size, policy.action_dim) != (b.n_bins, b.vocab_size, teacher.action_dim) or not same_stats:
        raise ValueError("the teacher's action tokens differ from the policy's (bins, vocabulary, action dim or "
                         "action statistics): distillation needs tokens that mean the same actions")
