"""The one interface every fine-tuning method implements: what data it sees and what loss it minimises.

An :class:`Updater` names its data source (``source``: the policy's own rollouts, a teacher's rollouts,
or demonstrations), turns one iteration's raw data into a :class:`~vla_cl.updaters.data.Batch`
(``prepare``: advantages, targets, old log-probs; no gradients), and scores a minibatch
(``objective``: a dict of named loss terms from ``vla_cl.updaters.losses``). Everything else (the
optimiser, minibatches, gradient accumulation and clipping, schedules, evaluation, the KL probe,
checkpoints) belongs to the one loop in ``vla_cl.updaters.loop``, so methods differ only in their loss
and their data.

Any method can add the explicit penalty ``kl_coef`` * KL(pi0 || pi) on the batch's states
(``Updater.loss``): pi0 comes from ``policy.reference()``, teacher-forced on the batch's tokens.

Losses use ``"sequence_mean"``: one action of D tokens weighs as its summed token terms (its
log-probability, cross-entropy or KL by the chain rule), averaged over the rows.

Configs: :class:`UpdaterConfig` holds the optimiser and loop settings every method shares; each
method's config subclasses it (adding its own fields and defaults) and validates in ``__post_init__``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch

from vla_cl.config import option, require, require_choice
from vla_cl.updaters.losses import Terms, combine, kl_penalty_loss

SCHEDULES = ("constant", "linear", "cosine")
SOURCES = ("rollouts", "teacher", "demos")  # the policy's own episodes, a teacher's, a demonstration set
REDUCTION = "sequence_mean"


@dataclasses.dataclass
class UpdaterConfig:
    """Settings every updater shares: the optimiser (AdamW), its schedule and how each iteration's data
    is cut into minibatches and optimiser steps."""

    lr: float = option(1e-4, "AdamW learning rate (peak, after warmup)")
    schedule: str = option("constant", "learning-rate schedule over the run: constant, linear or cosine decay")
    warmup_steps: int = option(0, "optimiser steps of linear warmup from 0 to lr")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    grad_clip: float = option(1.0, "clip the global gradient norm to this before each step (0 = no clipping)")
    grad_accum: int = option(1, "minibatches whose gradients add up into one optimiser step")
    minibatches: int = option(1, "minibatches per pass over an iteration's data")
    update_epochs: int = option(1, "passes over each iteration's data")
    kl_coef: float = option(0.0, "weight of the explicit KL(pi0 || pi) penalty on the batch's states (0 = off)")

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", self.lr, "a learning rate > 0")
        require_choice("schedule", self.schedule, SCHEDULES)
        require(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "an integer >= 0")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0 (0 = no clipping)")
        require(self.grad_accum >= 1, "grad_accum", self.grad_accum, "an integer >= 1")
        require(self.minibatches >= 1, "minibatches", self.minibatches, "an integer >= 1")
        require(self.update_epochs >= 1, "update_epochs", self.update_epochs, "an integer >= 1")
        steps = self.minibatches * self.update_epochs
        require(steps % self.grad_accum == 0, "grad_accum", self.grad_accum,
                f"a divisor of minibatches * update_epochs = {steps}")
        require(self.kl_coef >= 0, "kl_coef", self.kl_coef, ">= 0 (0 = no KL penalty)")

    @property
    def steps_per_iteration(self) -> int:
        return self.minibatches * self.update_epochs // self.grad_accum


@dataclasses.dataclass
class RolloutConfig(UpdaterConfig):
    """Updaters that learn from episodes collected every iteration."""

    episodes: int = option(8, "episodes collected per iteration")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.episodes >= 1, "episodes", self.episodes, "an integer >= 1")


@dataclasses.dataclass
class DatasetConfig(UpdaterConfig):
    """Updaters that learn from a demonstration set."""

    batch_size: int = option(256, "demonstration samples per iteration")
    minibatches: int = option(4, "minibatches per pass over an iteration's data")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.batch_size >= self.minibatches, "batch_size", self.batch_size,
                f"an integer >= minibatches ({self.minibatches})")


class Updater(abc.ABC):
    """A fine-tuning method: ``source`` + ``prepare`` (data -> Batch) + ``objective`` (Batch -> terms)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[UpdaterConfig]] = UpdaterConfig
    source: ClassVar[str] = "rollouts"
    needs_value_head: ClassVar[bool] = False

    def __init__(self, config: UpdaterConfig | None = None, **options: Any):
        if config is None:
            config = self.config_class(**options)
        elif options:
            raise ValueError("pass a config or options, not both")
        if type(config) is not self.config_class:
            raise TypeError(f"updater {self.name!r} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def repeats(self) -> int:
        """How many episodes each initial state gets per iteration (GRPO's group size)."""
        return 1

    @abc.abstractmethod
    def prepare(self, policy: Any, data: Any) -> Any:
        """One iteration's raw data (Rollouts, or a Batch of demonstrations) -> the Batch to optimise on."""

    @abc.abstractmethod
    def objective(self, policy: Any, batch: Any, logits: torch.Tensor) -> Terms:
        """Named loss terms on a minibatch, given pi's action logits (B, D, V) on it."""

    def loss(self, policy: Any, batch: Any) -> Terms:
        """The objective plus, when ``kl_coef`` > 0, ``kl_coef`` * KL(pi0 || pi) on the batch's states."""
        logits = policy.action_logits(batch.obs, batch.tokens)
        terms = self.objective(policy, batch, logits)
        if self.config.kl_coef > 0:
            with policy.reference():
                base_logits = policy.action_logits(batch.obs, batch.tokens)
            penalty = kl_penalty_loss(base_logits, logits, self.config.kl_coef, reduction=REDUCTION,
                                      support=policy.action_support)
            terms = combine(terms, penalty)
        return terms
