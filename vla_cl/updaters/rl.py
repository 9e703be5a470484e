"""On-policy RL updaters: PPO (actor-critic with GAE), REINFORCE and GRPO on the policy's own episodes.

* ``ppo``: clipped surrogate on whole-action probability ratios, a value head regressed on GAE returns
  (bootstrapped on truncation, not on termination), an optional entropy bonus; several epochs of
  minibatches per iteration. Needs a policy with a value head.
* ``reinforce``: -A log pi(a|s) with one advantage per episode, its return minus the batch's mean
  return, divided by the batch's return std (reward normalisation): the paper's robot RL.
* ``grpo``: the same, with the advantage normalised within a group of ``group_size`` episodes that start
  from the same initial state (same reset seed), so that the initial state's difficulty cancels out.

REINFORCE and GRPO take one gradient pass by default; with ``update_epochs`` > 1 the later passes use
the clipped per-token ratio against the collecting policy (``token_clip_eps``, GRPO's per-token clip),
because the samples are stale; PPO's ``clip_eps`` clips the whole action's ratio instead.
"""

from __future__ import annotations

import abc
import dataclasses

import torch

from vla_cl.config import option, require
from vla_cl.kl import action_log_probs
from vla_cl.updaters.advantages import bootstrap_values, gae, standardize
from vla_cl.updaters.base import (
    EPISODES_HELP,
    KL_COEF_HELP,
    NAME_HELP,
    REDUCTION,
    OptimizerConfig,
    Updater,
    check_common,
    optimizer,
)
from vla_cl.updaters.data import Batch, Rollouts, batched
from vla_cl.updaters.losses import (
    Terms,
    baseline_advantages,
    combine,
    entropy_bonus,
    group_advantages,
    policy_gradient_loss,
    ppo_policy_loss,
    value_loss,
)


def policy_device(policy) -> torch.device:
    return next(policy.parameters()).device


# ------------------------------------------------------------------------------------------ PPO


@dataclasses.dataclass
class PPOConfig:
    name: str = option("ppo", NAME_HELP)
    optim: OptimizerConfig = optimizer(lr=3e-4, minibatches=4, update_epochs=4)
    episodes: int = option(8, EPISODES_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)
    clip_eps: float = option(0.2, "clip the whole action's probability ratio pi/pi_old to 1 +- clip_eps")
    value_clip: float | None = option(None, "clip each value's change per iteration to +- this (None = off)")
    vf_coef: float = option(0.5, "weight of the value loss 1/2 (V - R)^2")
    ent_coef: float = option(0.0, "weight of the entropy bonus")
    gamma: float = option(0.99, "discount factor")
    gae_lambda: float = option(0.95, "GAE lambda (1 = Monte Carlo returns, 0 = one-step TD)")
    normalize_advantages: bool = option(True, "standardise the advantages over each iteration's batch")

    def __post_init__(self) -> None:
        check_common(self, "ppo")
        require(0 < self.clip_eps < 1, "clip_eps", self.clip_eps, "0 < clip_eps < 1")
        if self.value_clip is not None:
            require(self.value_clip > 0, "value_clip", self.value_clip, "> 0, or None for no value clipping")
        require(self.vf_coef >= 0, "vf_coef", self.vf_coef, ">= 0")
        require(self.ent_coef >= 0, "ent_coef", self.ent_coef, ">= 0")
        require(0 <= self.gamma <= 1, "gamma", self.gamma, "0 <= gamma <= 1")
        require(0 <= self.gae_lambda <= 1, "gae_lambda", self.gae_lambda, "0 <= gae_lambda <= 1")


class PPO(Updater):
    name = "ppo"
    config_class = PPOConfig
    needs_value_head = True

    def prepare(self, policy, data: Rollouts) -> Batch:
        c, device = self.config, policy_device(policy)
        value = lambda obs, _tokens: policy.value(obs)
        values = batched(value, data.obs, None, device)
        final_values = batched(value, data.final_obs, None, device)
        old_log_probs = batched(lambda obs, tokens: policy.log_probs(obs, tokens).sum(-1), data.obs, data.tokens,
                                device)
        next_values = bootstrap_values(values, final_values, data.episode_end, data.episode)
        advantages, returns = gae(data.reward, values, next_values, data.terminated, data.episode_end,
                                  c.gamma, c.gae_lambda)
        if c.normalize_advantages:
            advantages = standardize(advantages)
        return Batch(data.obs, data.tokens, advantages=advantages, returns=returns, old_log_probs=old_log_probs,
                     old_values=values)

    def objective(self, policy, batch: Batch, logits: torch.Tensor) -> Terms:
        c, b = self.config, batch
        log_probs = action_log_probs(logits, batch.tokens, policy.action_support).sum(-1)
        return combine(
            ppo_policy_loss(log_probs, b.old_log_probs, b.advantages, c.clip_eps),
            value_loss(policy.value(batch.obs), b.returns, b.old_values, c.value_clip, c.vf_coef),
            entropy_bonus(logits, c.ent_coef, reduction=REDUCTION, support=policy.action_support),
        )


# ------------------------------------------------------------------------------------------ REINFORCE, GRPO


# Per token, as GRPO (DeepSeekMath) clips: not PPO's whole-action clip_eps (see losses' docstring).
CLIP_HELP = "clip each token's ratio pi/pi_old to 1 +- this on passes after the first (optim.update_epochs > 1)"


class PolicyGradient(Updater):
    """-A log pi(a|s) with one advantage per episode, shared by its steps; subclasses say how A is set."""

    @abc.abstractmethod
    def episode_advantages(self, data: Rollouts) -> torch.Tensor:
        """One advantage per episode (E,)."""

    def prepare(self, policy, data: Rollouts) -> Batch:
        old = batched(policy.log_probs, data.obs, data.tokens, policy_device(policy)) \
            if self.config.optim.update_epochs > 1 else None
        return Batch(data.obs, data.tokens, advantages=self.episode_advantages(data)[data.episode].float(),
                     old_log_probs=old)

    def objective(self, policy, batch: Batch, logits: torch.Tensor) -> Terms:
        return policy_gradient_loss(
            logits,
            batch.tokens,
            batch.advantages,
            old_log_probs=batch.old_log_probs,
            token_clip_eps=self.config.token_clip_eps,
            reduction=REDUCTION,
            support=policy.action_support,
        )


@dataclasses.dataclass
class ReinforceConfig:
    name: str = option("reinforce", NAME_HELP)
    optim: OptimizerConfig = optimizer(lr=3e-4)
    episodes: int = option(8, EPISODES_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)
    token_clip_eps: float = option(0.2, CLIP_HELP)
    normalize: bool = option(True, "divide the centred returns by the batch's return std")

    def __post_init__(self) -> None:
        check_common(self, "reinforce")


class Reinforce(PolicyGradient):
    name = "reinforce"
    config_class = ReinforceConfig

    def episode_advantages(self, data: Rollouts) -> torch.Tensor:
        return baseline_advantages(data.returns, scale=self.config.normalize)


@dataclasses.dataclass
class GRPOConfig:
    name: str = option("grpo", NAME_HELP)
    optim: OptimizerConfig = optimizer(lr=3e-4)
    episodes: int = option(8, EPISODES_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)
    token_clip_eps: float = option(0.2, CLIP_HELP)
    group_size: int = option(4, "episodes per group, all from the same initial state (reset seed)")
    scale: bool = option(True, "divide by the group's return std (False: Dr. GRPO's centring only)")

    def __post_init__(self) -> None:
        check_common(self, "grpo")
        require(self.group_size >= 2, "group_size", self.group_size, "an integer >= 2")
        require(self.episodes % self.group_size == 0, "episodes", self.episodes,
                f"a multiple of group_size ({self.group_size})")


class GRPO(PolicyGradient):
    name = "grpo"
    config_class = GRPOConfig

    @property
    def repeats(self) -> int:
        return self.config.group_size

    def episode_advantages(self, data: Rollouts) -> torch.Tensor:
        # Episodes arrive repeat-major: episode r * n + k is repeat r of initial state k.
        groups = data.returns.reshape(self.config.group_size, -1).T  # (n, G)
        return group_advantages(groups, scale=self.config.scale).T.reshape(-1)
