"""Supervised updaters: cross-entropy on action tokens, differing in where the targets come from.

* ``sft``: behaviour cloning on a demonstration set (hard targets: the demonstrated action's tokens, or
  Gaussian soft labels over the neighbouring bins with ``label_sigma`` > 0).
* ``sft_kl``: ``sft`` plus ``kl_coef`` (beta, > 0) * KL(pi0 || pi) on the same demonstration states, the
  new task's states: SFT pulled back towards pi0 where it is being trained.
* ``rft``: SFT on the policy's own successful episodes of each iteration (rejection-sampling fine-tuning;
  the paper's "1-0 REINFORCE": REINFORCE with reward 1 on success, 0 otherwise, and no baseline has
  exactly this gradient). An iteration without a success makes no update.
* ``oracle_sft``: SFT towards the KL-minimal target where it can be computed (``acceptable_token_targets``).
* ``distill``: SFT on a teacher policy's episodes (e.g. an RL-trained checkpoint), on the teacher's whole
  token distribution at each visited state (``targets="distribution"``) or on the tokens it took.

What ``oracle_sft`` computes, exactly. On each demonstration state x, action dimension d, the acceptable
tokens are A_d(x) = {v : |v - v*_d| <= window}, the demonstrated token v*_d and its neighbours
(``window`` bins either side, i.e. actions within ``window`` bin widths of the demonstrated one, which the
method takes to be as good). The target is pi0's distribution restricted to them and renormalised:

    q_d(v | x) = pi0_d(v | x) 1[v in A_d(x)] / sum_{u in A_d(x)} pi0_d(u | x)

For a policy whose D action tokens are independent given x (``state_token``), the product of the q_d is
exactly the distribution closest to pi0 in KL(q || pi0) among all that only take acceptable actions (the
I-projection of pi0 onto A_1 x ... x A_D), so fitting it is the least-forgetting way to learn "act
acceptably"; ``window=0`` is plain SFT. For an autoregressive policy (``small_vlm``, OpenVLA) position d
is teacher-forced on the demonstrated tokens before it and q_d renormalises pi0's conditional there; the
exact projection would also weight each token by pi0's mass of acceptable continuations, which is not
computed, so there the target is an approximation. Whole actions that succeed in the simulator are not
enumerable (each would need its own rollout), so a success-based acceptable set is out of reach here;
the ParityMNIST track (``vla_cl.parity``) has the case where it is exact.
"""

from __future__ import annotations

import dataclasses

import torch

from vla_cl.config import option, require, require_choice
from vla_cl.kl import resolve_support
from vla_cl.updaters.base import (
    BATCH_SIZE_HELP,
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
from vla_cl.updaters.losses import Terms, gaussian_token_targets, restricted_targets, sft_loss
from vla_cl.updaters.sources import Demonstrations, TeacherEpisodes

DISTILL_TARGETS = ("distribution", "tokens")


def acceptable_token_targets(
    base_logits: torch.Tensor, tokens: torch.Tensor, window: int, support=None
) -> torch.Tensor:
    """pi0's distribution at each position restricted to the tokens within ``window`` ids of ``tokens``
    (vocabulary ids, shape ``base_logits.shape[:-1]``) and renormalised; shape (..., S) over the support
    (``losses.restricted_targets`` with the window as the allowed set)."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window!r}")
    if tokens.shape != base_logits.shape[:-1]:
        raise ValueError(f"tokens must have shape {tuple(base_logits.shape[:-1])}, got {tuple(tokens.shape)}")
    columns = resolve_support(support, base_logits.shape[-1])
    n_support = columns.stop - columns.start
    offsets = torch.arange(n_support, device=base_logits.device) - (tokens.long() - columns.start).unsqueeze(-1)
    return restricted_targets(base_logits, offsets.abs() <= window, columns)


def cross_entropy(policy, logits: torch.Tensor, targets: torch.Tensor) -> Terms:
    return sft_loss(logits, targets, reduction=REDUCTION, support=policy.action_support, name="bc")


# ------------------------------------------------------------------------------------------ demonstrations


SIGMA_HELP = ("Gaussian soft labels around the demonstrated token, sigma in bins (0 = hard labels); see "
              "losses.gaussian_token_targets")


@dataclasses.dataclass
class SFTConfig:
    name: str = option("sft", NAME_HELP)
    optim: OptimizerConfig = optimizer(minibatches=4)
    batch_size: int = option(256, BATCH_SIZE_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)
    label_sigma: float = option(0.0, SIGMA_HELP)

    def __post_init__(self) -> None:
        check_common(self, "sft")
        require(self.label_sigma >= 0, "label_sigma", self.label_sigma, ">= 0 bins (0 = hard labels)")


class SFT(Updater):
    name = "sft"
    config_class = SFTConfig
    source = Demonstrations

    def prepare(self, policy, data: Batch) -> Batch:
        return data

    def objective(self, policy, batch: Batch, logits: torch.Tensor) -> Terms:
        sigma = self.config.label_sigma
        targets = batch.tokens if sigma == 0 else gaussian_token_targets(batch.tokens, sigma, policy.action_support)
        return cross_entropy(policy, logits, targets)


@dataclasses.dataclass
class SFTKLConfig:
    name: str = option("sft_kl", NAME_HELP)
    optim: OptimizerConfig = optimizer(minibatches=4)
    batch_size: int = option(256, BATCH_SIZE_HELP)
    kl_coef: float = option(0.1, "beta: weight of KL(pi0 || pi) on the demonstration states (> 0)")
    label_sigma: float = option(0.0, SIGMA_HELP)

    def __post_init__(self) -> None:
        check_common(self, "sft_kl")
        require(self.label_sigma >= 0, "label_sigma", self.label_sigma, ">= 0 bins (0 = hard labels)")
        require(self.kl_coef > 0, "kl_coef", self.kl_coef, "> 0 (use updater=sft for no KL term)")


class SFTKL(SFT):
    name = "sft_kl"
    config_class = SFTKLConfig


@dataclasses.dataclass
class OracleSFTConfig:
    name: str = option("oracle_sft", NAME_HELP)
    optim: OptimizerConfig = optimizer(minibatches=4)
    batch_size: int = option(256, BATCH_SIZE_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)
    window: int = option(2, "acceptable tokens: the demonstrated one and this many bins either side")

    def __post_init__(self) -> None:
        check_common(self, "oracle_sft")
        require(self.window >= 0, "window", self.window, "an integer >= 0 (0 = plain SFT)")


class OracleSFT(Updater):
    name = "oracle_sft"
    config_class = OracleSFTConfig
    source = Demonstrations

    def prepare(self, policy, data: Batch) -> Batch:
        device = next(policy.parameters()).device
        with policy.reference():
            base_logits = batched(policy.action_logits, data.obs, data.tokens, device)
        targets = acceptable_token_targets(base_logits, data.tokens, self.config.window, policy.action_support)
        return Batch(data.obs, data.tokens, targets=targets)

    def objective(self, policy, batch: Batch, logits: torch.Tensor) -> Terms:
        return cross_entropy(policy, logits, batch.targets)


# ------------------------------------------------------------------------------------------ rollouts


@dataclasses.dataclass
class RFTConfig:
    name: str = option("rft", NAME_HELP)
    optim: OptimizerConfig = optimizer()
    episodes: int = option(8, EPISODES_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)

    def __post_init__(self) -> None:
        check_common(self, "rft")


class RFT(Updater):
    name = "rft"
    config_class = RFTConfig

    def prepare(self, policy, data: Rollouts) -> Batch:
        return data.rows(data.success)

    def objective(self, policy, batch: Batch, logits: torch.Tensor) -> Terms:
        return cross_entropy(policy, logits, batch.tokens)


@dataclasses.dataclass
class DistillConfig:
    name: str = option("distill", NAME_HELP)
    optim: OptimizerConfig = optimizer()
    episodes: int = option(8, EPISODES_HELP)
    kl_coef: float = option(0.0, KL_COEF_HELP)
    targets: str = option("distribution", "learn the teacher's token distribution or the tokens it took")
    only_success: bool = option(False, "learn only from the teacher's successful episodes")
    teacher_greedy: bool = option(False, "the teacher acts greedily (argmax) instead of sampling")

    def __post_init__(self) -> None:
        check_common(self, "distill")
        require_choice("targets", self.targets, DISTILL_TARGETS)


class Distill(Updater):
    name = "distill"
    config_class = DistillConfig
    source = TeacherEpisodes

    def prepare(self, policy, data: Rollouts) -> Batch:
        return data.rows(data.success if self.config.only_success else None)

    def objective(self, policy, batch: Batch, logits: torch.Tensor) -> Terms:
        targets = batch.targets if self.config.targets == "distribution" else batch.tokens
        return cross_entropy(policy, logits, targets)
