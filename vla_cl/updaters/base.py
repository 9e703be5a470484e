"""The one interface every fine-tuning method implements: what data it sees and what loss it minimises.

An :class:`Updater` names its data source (``source``, a :class:`~vla_cl.updaters.sources.Source`: the
policy's own rollouts, a teacher's rollouts, or demonstrations), turns one iteration's raw data into a :class:`~vla_cl.updaters.data.Batch`
(``prepare``: advantages, targets, old log-probs; no gradients), and scores a minibatch
(``objective``: a dict of named loss terms from ``vla_cl.updaters.losses``). Everything else (the
optimiser, minibatches, gradient accumulation and clipping, schedules, evaluation, the KL probe,
checkpoints) belongs to the one loop in ``vla_cl.updaters.loop``, so methods differ only in their loss
and their data.

Any method can add the explicit penalty ``kl_coef`` * KL(pi0 || pi) on the batch's states
(``Updater.loss``): pi0 comes from ``policy.reference()``, teacher-forced on the batch's tokens. With a KL
budget (``kl_budget``, ``vla_cl.updaters.budget``) the loop moves that weight to keep the probe's KL in budget.

Losses use ``"sequence_mean"``: one action of D tokens weighs as its summed token terms (its
log-probability, cross-entropy or KL by the chain rule), averaged over the rows.

Configs: one flat dataclass per method, next to it, holding its name, the shared :class:`OptimizerConfig` as
``optim`` (with the method's own defaults, written where the method is), ``kl_coef``, how much data an
iteration takes (``episodes`` or ``batch_size``) and the method's own fields; no config inherits from another,
so every default is read where it is declared.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch

from vla_cl.config import option, require, require_choice
from vla_cl.updaters.losses import Terms, combine, kl_penalty_loss
from vla_cl.updaters.sources import Episodes, Source

SCHEDULES = ("constant", "linear", "cosine")
REDUCTION = "sequence_mean"


@dataclasses.dataclass
class OptimizerConfig:
    """The optimiser (AdamW), its schedule and how each iteration's data is cut into minibatches and optimiser
    steps: one dataclass every updater's config holds as ``optim``, with that updater's own defaults."""

    lr: float = option(1e-4, "AdamW learning rate (peak, after warmup)")
    schedule: str = option("constant", "learning-rate schedule over the run: constant, linear or cosine decay")
    warmup_steps: int = option(0, "optimiser steps of linear warmup from 0 to lr")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay")
    grad_clip: float = option(1.0, "clip the global gradient norm to this before each step (0 = no clipping)")
    grad_accum: int = option(1, "minibatches whose gradients add up into one optimiser step")
    minibatches: int = option(1, "minibatches per pass over an iteration's data")
    update_epochs: int = option(1, "passes over each iteration's data")

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", self.lr, "a learning rate > 0")
        require_choice("optim.schedule", self.schedule, SCHEDULES)
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "an integer >= 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0 (0 = no clipping)")
        require(self.grad_accum >= 1, "optim.grad_accum", self.grad_accum, "an integer >= 1")
        require(self.minibatches >= 1, "optim.minibatches", self.minibatches, "an integer >= 1")
        require(self.update_epochs >= 1, "optim.update_epochs", self.update_epochs, "an integer >= 1")
        steps = self.minibatches * self.update_epochs
        require(steps % self.grad_accum == 0, "optim.grad_accum", self.grad_accum,
                f"a divisor of optim.minibatches * optim.update_epochs = {steps}")

    @property
    def steps_per_iteration(self) -> int:
        return self.minibatches * self.update_epochs // self.grad_accum


def optimizer(**defaults: Any) -> Any:
    """The ``optim`` field of an updater's config, with that updater's defaults (the rest: OptimizerConfig's)."""
    return dataclasses.field(default_factory=lambda: OptimizerConfig(**defaults),
                             metadata={"help": "the optimiser: learning rate, schedule, minibatches, epochs"})


# The fields every updater's config has besides ``optim``, each declared in the config itself with its help below
# and checked by the helpers after it: an updater's defaults are read where the updater is defined.
NAME_HELP = "the updater (fixed by the config's class)"
KL_COEF_HELP = "weight of the explicit KL(pi0 || pi) penalty on the batch's states (0 = off)"
EPISODES_HELP = "episodes collected per iteration"
BATCH_SIZE_HELP = "demonstration samples per iteration"


def check_common(config: Any, name: str) -> None:
    """The checks every updater config shares: its name, the KL weight, its data size and, where it has one,
    the per-token clip."""
    require(config.name == name, "updater.name", config.name, f"{name!r} for a {type(config).__name__}")
    require(isinstance(config.optim, OptimizerConfig), "optim", config.optim, "an OptimizerConfig")
    require(config.kl_coef >= 0, "kl_coef", config.kl_coef, ">= 0 (0 = no KL penalty)")
    if hasattr(config, "token_clip_eps"):
        require(0 < config.token_clip_eps < 1, "token_clip_eps", config.token_clip_eps, "0 < token_clip_eps < 1")
    if hasattr(config, "episodes"):
        require(config.episodes >= 1, "episodes", config.episodes, "an integer >= 1")
    if hasattr(config, "batch_size"):
        require(config.batch_size >= config.optim.minibatches, "batch_size", config.batch_size,
                f"an integer >= optim.minibatches ({config.optim.minibatches})")


class Updater(abc.ABC):
    """A fine-tuning method: ``source`` + ``prepare`` (data -> Batch) + ``objective`` (Batch -> terms)."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type]
    source: ClassVar[type[Source]] = Episodes  # where its data comes from (vla_cl.updaters.sources)
    needs_value_head: ClassVar[bool] = False

    def __init__(self, config: Any = None, **options: Any):
        if config is None:
            from vla_cl.updaters.registry import config_from_options

            config = config_from_options({**options, "name": self.name})
        elif options:
            raise ValueError("pass a config or options, not both")
        if type(config) is not self.config_class:
            raise TypeError(f"updater {self.name!r} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.kl_coef = float(config.kl_coef)  # the penalty's weight now (a KL budget's controller moves it)

    @property
    def repeats(self) -> int:
        """How many episodes each initial state gets per iteration (GRPO's group size)."""
        return 1

    def data_source(self, policy: Any, *, demos: Any = None, teacher: Any = None, reward: str = "success",
                    seed: int, device: torch.device) -> Source:
        """The run's supply of data (raises ValueError when the run lacks what the source needs)."""
        return self.source.for_updater(self, policy, demos=demos, teacher=teacher, reward=reward, seed=seed,
                                       device=device)

    @abc.abstractmethod
    def prepare(self, policy: Any, data: Any) -> Any:
        """One iteration's raw data (Rollouts, or a Batch of demonstrations) -> the Batch to optimise on."""

    @abc.abstractmethod
    def objective(self, policy: Any, batch: Any, logits: torch.Tensor) -> Terms:
        """Named loss terms on a minibatch, given pi's action logits (B, D, V) on it."""

    def loss(self, policy: Any, batch: Any) -> Terms:
        """The objective plus, when ``kl_coef`` > 0, ``kl_coef`` * KL(pi0 || pi) on the batch's states (the
        config's weight, or the one a KL budget's controller set, ``vla_cl.updaters.budget``)."""
        logits = policy.action_logits(batch.obs, batch.tokens)
        terms = self.objective(policy, batch, logits)
        if self.kl_coef > 0:
            with policy.reference():
                base_logits = policy.action_logits(batch.obs, batch.tokens)
            penalty = kl_penalty_loss(base_logits, logits, self.kl_coef, reduction=REDUCTION,
                                      support=policy.action_support)
            terms = combine(terms, penalty)
        return terms
