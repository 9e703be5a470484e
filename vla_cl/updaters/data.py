"""What an updater learns from: on-policy rollouts (whole episodes) or demonstration batches.

``collect_rollouts`` runs a policy on a task's envs through the shared episode collector
(``vla_cl.envs.vector.rollout``) and returns :class:`Rollouts`: one row per step, rows of an episode
contiguous and in step order, with the action tokens the policy sampled, the rewards, how each episode
ended and its final pre-reset observation (for bootstrapping values on truncation). Episode k of a
collection starts from seed ``seed + k``; ``repeats`` collects the same seeds several times (GRPO's
groups of rollouts from one initial state).

Rewards. ``"success"``: 1 on the first step at which the task reports success, else 0 (the paper's
binary reward; ManiSkill ends the episode there). ``"env"``: the task's own (dense) reward.

``DemoStream`` turns a demonstration set into batches: batch i is a pure function of (seed, i), so a
resumed run sees exactly the samples an uninterrupted one would.

:class:`Batch` is what the loop hands to an updater's loss: observations, the action tokens the loss is
about (taken, demonstrated or teacher-forced) and per-row tensors the updater attached.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from vla_cl.kl import log_probs as support_log_probs
from vla_cl.policies.base import ObsBatch, Policy

REWARDS = ("success", "env")
EVAL_CHUNK = 256  # rows per no-grad forward pass when scoring a whole batch


@dataclasses.dataclass
class Batch:
    """Rows of training data: observations, action tokens (N, D) and what an updater's ``prepare`` adds per
    row (None where it adds nothing): the policy-gradient terms, or soft targets to learn."""

    obs: ObsBatch
    tokens: torch.Tensor
    advantages: torch.Tensor | None = None  # (N,) per-row advantage (PPO: GAE; REINFORCE/GRPO: the episode's)
    returns: torch.Tensor | None = None  # (N,) PPO's value targets
    old_log_probs: torch.Tensor | None = None  # (N,) or (N, D): the collecting policy's log-probabilities
    old_values: torch.Tensor | None = None  # (N,) the collecting policy's values (value clipping)
    targets: torch.Tensor | None = None  # (N, D, S) token distributions to learn (a teacher's, or restricted)

    PER_ROW: ClassVar[tuple[str, ...]] = ("advantages", "returns", "old_log_probs", "old_values", "targets")

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.tokens.shape[0] != len(self.obs) or self.tokens.is_floating_point():
            raise ValueError(f"tokens must be integer (N, D) with N = {len(self.obs)}, got {tuple(self.tokens.shape)}")
        for name, value in self._present().items():
            if value.shape[0] != len(self.obs):
                raise ValueError(f"field {name!r} has {value.shape[0]} rows, the batch {len(self.obs)}")

    def _present(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.PER_ROW if getattr(self, name) is not None}

    def __len__(self) -> int:
        return len(self.obs)

    def select(self, rows: Any) -> Batch:
        index = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        return Batch(self.obs.select(index), self.tokens[index], **{k: v[index] for k, v in self._present().items()})

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.obs.to(device), self.tokens.to(device),
                     **{k: v.to(device) for k, v in self._present().items()})


def batched(fn: Callable[[ObsBatch, torch.Tensor], torch.Tensor], obs: ObsBatch, tokens: torch.Tensor | None,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """``fn(obs, tokens)`` over ``EVAL_CHUNK`` rows at a time without gradients, concatenated on the CPU."""
    outputs = []
    with torch.no_grad():
        for start in range(0, len(obs), EVAL_CHUNK):
            rows = torch.arange(start, min(start + EVAL_CHUNK, len(obs)))
            chunk_tokens = None if tokens is None else tokens[rows].to(device)
            outputs.append(fn(obs.select(rows).to(device), chunk_tokens).float().cpu())
    return torch.cat(outputs)


# ------------------------------------------------------------------------------------------ rollouts


@dataclasses.dataclass
class Rollouts:
    """Whole episodes, one row per step (see the module docstring); E episodes, N rows."""

    obs: ObsBatch  # (N,) the observation each action was chosen from
    tokens: torch.Tensor  # (N, D) the action tokens taken
    reward: torch.Tensor  # (N,) float32
    terminated: torch.Tensor  # (N,) bool: the task ended after this step
    truncated: torch.Tensor  # (N,) bool: the time limit ended the episode after this step
    episode: torch.Tensor  # (N,) int64 episode index 0..E-1
    final_obs: ObsBatch  # (E,) each episode's last observation, before any reset
    success: torch.Tensor  # (E,) bool
    returns: torch.Tensor  # (E,) float32 sum of the rewards
    seeds: torch.Tensor  # (E,) int64 reset seeds
    probs: torch.Tensor | None = None  # (N, D, S) the acting policy's distributions (teacher data only)

    @property
    def episode_end(self) -> torch.Tensor:
        return self.terminated | self.truncated

    @property
    def num_episodes(self) -> int:
        return int(self.success.shape[0])

    def __len__(self) -> int:
        return len(self.obs)

    def rows(self, keep_episodes: torch.Tensor | None = None) -> Batch:
        """The steps as a Batch (of the episodes where ``keep_episodes`` (E,) is true, if given)."""
        index = torch.arange(len(self)) if keep_episodes is None else torch.nonzero(keep_episodes[self.episode])
        index = index.reshape(-1)
        targets = None if self.probs is None else self.probs[index]
        return Batch(self.obs.select(index), self.tokens[index], targets=targets)

    def summary(self) -> dict[str, float]:
        lengths = torch.bincount(self.episode, minlength=self.num_episodes).float()
        return {
            "episodes": self.num_episodes,
            "env_steps": len(self),
            "success_rate": float(self.success.float().mean()),
            "return": float(self.returns.mean()),
            "length": float(lengths.mean()),
        }


class PolicyActor:
    """A Policy as the collector's callable: observation dicts -> physical actions, keeping the tokens
    it chose for each env slot (``tokens``) so the caller can pair them with the steps."""

    def __init__(self, policy: Policy, generator: torch.Generator | None, greedy: bool = False,
                 device: torch.device | str = "cpu", temperature: float = 1.0):
        self.policy, self.generator, self.greedy, self.device = policy, generator, greedy, device
        self.temperature = temperature
        self.tokens: torch.Tensor | None = None

    def get_state(self) -> torch.Tensor | None:
        """Where the sampling is (a collection that must start again comes back here)."""
        return None if self.generator is None else self.generator.get_state()

    def set_state(self, state: torch.Tensor | None) -> None:
        if state is not None:
            self.generator.set_state(state)

    def __call__(self, observations: list[dict]) -> np.ndarray:
        obs = ObsBatch.from_observations(observations).to(self.device)
        sample = self.policy.generate(obs, greedy=self.greedy, temperature=self.temperature, generator=self.generator)
        self.tokens = sample.tokens.cpu()
        return sample.actions


def collect_rollouts(
    policy: Policy,
    env: Any,
    n_episodes: int,
    seed: int,
    generator: torch.Generator | None,
    *,
    repeats: int = 1,
    reward: str = "success",
    greedy: bool = False,
    with_probs: bool = False,
    device: torch.device | str = "cpu",
    actor: Any = None,
) -> Rollouts:
    """``repeats`` x ``n_episodes`` episodes of ``policy`` on ``env`` (a VLAEnv, a vector env with
    auto-reset disabled, or env workers: ``vla_cl.envs.remote``); repeat r's episode k starts from seed
    ``seed + k`` and is episode ``r * n_episodes + k`` of the result. ``with_probs`` also records the
    policy's action distributions at every step (teacher-forced on the tokens it took). ``actor`` chooses
    the actions instead of a :class:`PolicyActor` of ``policy`` in this process (an inference worker,
    ``vla_cl.updaters.inference``; it samples from ``generator``'s state as this process would)."""
    from vla_cl.envs.vector import rollout

    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    if actor is None:
        actor = PolicyActor(policy, generator, greedy, device)
    else:
        actor.start(generator, greedy)
    steps: list[list[tuple]] = []  # per episode: (obs, tokens, reward, terminated, truncated)
    finals: list[dict] = []
    summaries = []
    for _ in range(repeats):
        episode_steps: dict[int, list[tuple]] = {k: [] for k in range(n_episodes)}
        episode_finals: dict[int, dict] = {}
        succeeded: set[int] = set()

        def on_step(t, episode_steps=episode_steps, episode_finals=episode_finals, succeeded=succeeded) -> None:
            if reward == "success":
                hit = bool(t.info.get("success", False)) and t.episode not in succeeded
                if hit:
                    succeeded.add(t.episode)
                value = float(hit)
            else:
                value = float(t.reward)
            episode_steps[t.episode].append((t.obs, actor.tokens[t.slot], value, t.terminated, t.truncated))
            if t.terminated or t.truncated:
                episode_finals[t.episode] = t.next_obs

        def on_restart(episode_steps=episode_steps, episode_finals=episode_finals, succeeded=succeeded) -> None:
            for recorded in episode_steps.values():  # a lost env worker: the collection starts again
                recorded.clear()
            episode_finals.clear()
            succeeded.clear()

        episodes = rollout(actor, env, n_episodes, seed=seed, on_step=on_step, on_restart=on_restart)
        for ep in episodes:
            steps.append(episode_steps[ep.index])
            finals.append(episode_finals[ep.index])
            summaries.append((ep.success, ep.seed))
    rows = [row for episode in steps for row in episode]
    obs = ObsBatch.from_observations([row[0] for row in rows])
    tokens = torch.stack([row[1] for row in rows])
    rewards = torch.tensor([row[2] for row in rows], dtype=torch.float32)
    episode = torch.repeat_interleave(torch.arange(len(steps)), torch.tensor([len(s) for s in steps]))
    returns = torch.zeros(len(steps), dtype=torch.float32).index_add_(0, episode, rewards)
    probs = None
    if with_probs:
        support = policy.action_support
        probs = batched(lambda o, t: support_log_probs(policy.action_logits(o, t), support).exp(),
                        obs, tokens, device)
    return Rollouts(
        obs=obs,
        tokens=tokens,
        reward=rewards,
        terminated=torch.tensor([row[3] for row in rows]),
        truncated=torch.tensor([row[4] for row in rows]),
        episode=episode,
        final_obs=ObsBatch.from_observations(finals),
        success=torch.tensor([s for s, _ in summaries]),
        returns=returns,
        seeds=torch.tensor([seed for _, seed in summaries], dtype=torch.long),
        probs=probs,
    )


# ------------------------------------------------------------------------------------------ demonstrations


class DemoStream:
    """A demonstration set as batches of ``batch_size`` rows: the rows of epoch e come in the order of a
    permutation seeded by (seed, e), and batch i takes rows i * batch_size ... of that endless stream."""

    def __init__(self, demos: Any, policy: Policy, batch_size: int, seed: int):
        arrays, meta = demos.arrays, demos.meta
        n = int(arrays["action"].shape[0])
        if arrays["action"].shape[1] != policy.action_dim:
            raise ValueError(
                f"demos have {arrays['action'].shape[1]}-D actions, the policy {policy.action_dim}-D"
            )
        instructions = [meta["instructions"][int(k)] for k in arrays["episode_index"]]
        state = torch.as_tensor(arrays["state"]) if "state" in arrays else None
        image = torch.as_tensor(arrays["image"]) if "image" in arrays else None
        self.obs = ObsBatch(instructions, state, image)
        normalized = policy.tokenizer.normalize(policy.policy_actions(arrays["action"]))
        self.tokens = torch.as_tensor(policy.tokenizer.encode(normalized))
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __len__(self) -> int:
        return self.n

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def batch(self, index: int) -> Batch:
        start = index * self.batch_size
        positions = np.arange(start, start + self.batch_size)
        epochs = positions // self.n
        rows = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            picked = epochs == epoch
            rows[picked] = self._order(int(epoch))[positions[picked] % self.n]
        return Batch(self.obs.select(torch.as_tensor(rows)), self.tokens[torch.as_tensor(rows)])
