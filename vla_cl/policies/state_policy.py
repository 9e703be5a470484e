"""``StateTokenPolicy``: the razor experiment's CPU pi0, a multi-task policy over privileged state.

An MLP reads [state, mean instruction embedding] and emits D independent heads of ``n_bins`` logits
(one linear layer reshaped to (B, D, n_bins)); the action tokens are not autoregressive, so
``action_logits`` ignores the tokens it is given. The policy has its own vocabulary of action tokens,
ids 0..n_bins-1 (``ActionTokenizer(vocab_size=n_bins, n_bins=n_bins, stats=...)``), and its own word
vocabulary for instructions (``instructions.InstructionEncoder``), which a new task can join with
``add_instruction(text, init_from=prior)``.

The optional value head is a separate MLP on the same inputs. It reads the instruction embedding
detached, so actor losses never reach the value head and the value loss never moves the actor.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from vla_cl.policies.base import ObsBatch, Policy
from vla_cl.policies.instructions import InstructionEncoder, build_vocabulary
from vla_cl.tokenizer import ActionTokenizer, NormStats


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def check_own_vocabulary(tokenizer: ActionTokenizer, action_dim: int, policy: str) -> None:
    """The small policies' logits are exactly the n_bins action tokens, and the statistics (if any)
    must describe ``action_dim`` dimensions."""
    if not isinstance(tokenizer, ActionTokenizer):
        raise TypeError(f"{policy} needs tokenizer=ActionTokenizer(...), got {type(tokenizer).__name__}")
    if tokenizer.vocab_size != tokenizer.n_bins:
        raise ValueError(
            f"{policy} has its own action vocabulary: build the tokenizer with vocab_size == n_bins "
            f"(got vocab_size={tokenizer.vocab_size}, n_bins={tokenizer.n_bins})"
        )
    if tokenizer.stats is not None and tokenizer.stats.action_dim != action_dim:
        raise ValueError(
            f"the tokenizer's statistics have {tokenizer.stats.action_dim} action dimensions, "
            f"the policy action_dim={action_dim}"
        )


def resolve_vocabulary(
    instructions: Sequence[str], vocabulary: Sequence[str] | None, policy: str
) -> list[str]:
    if (vocabulary is None) == (not instructions):
        if vocabulary is None:
            raise ValueError(
                f"{policy} needs instructions=[...] (the tasks' instructions) to build its vocabulary"
            )
        raise ValueError(f"{policy} takes instructions= or vocabulary=, not both")
    return list(vocabulary) if vocabulary is not None else build_vocabulary(instructions)


def build_for_task(cls: type[Policy], state_dim: int, action_stats: Mapping[str, Any], instructions: Sequence[str],
                   preset: str, value_head: bool, seed: int, **options: Any) -> Policy:
    """A fresh word-vocabulary policy (``state_token``, ``small_vlm``) for a task: its state size, the
    instructions as vocabulary, 256 bins over the task's action statistics; ``preset`` ``tiny`` starts
    from ``cls.tiny_config()``. ``options`` override the rest."""
    config = dict(cls.tiny_config()) if preset == "tiny" else {}
    config.update(instructions=list(instructions), value_head=value_head, state_dim=state_dim, **options)
    stats = NormStats(action_stats["q01"], action_stats["q99"], action_stats["mask"])
    torch.manual_seed(seed)
    return cls(tokenizer=ActionTokenizer(256, 256, stats), **config)


def check_state(obs: ObsBatch, state_dim: int, policy: str) -> torch.Tensor:
    """``obs.state`` as float32 (B, state_dim), finite."""
    if obs.state is None:
        raise ValueError(f"{policy} needs ObsBatch.state (float (B, {state_dim})); the batch has none")
    state = obs.state
    if state.ndim != 2 or state.shape[1] != state_dim:
        raise ValueError(f"{policy} expects state of shape (B, {state_dim}), got {tuple(state.shape)}")
    if not bool(torch.isfinite(state).all()):
        raise ValueError("ObsBatch.state contains NaN or inf")
    return state.float()


class StateTokenPolicy(Policy):
    """MLP over [state, instruction embedding] -> D heads of n_bins logits; optional value MLP."""

    name = "state_token"
    autoregressive = False

    def __init__(
        self,
        tokenizer: ActionTokenizer,
        state_dim: int,
        instructions: Sequence[str] = (),
        vocabulary: Sequence[str] | None = None,
        action_dim: int = 7,
        hidden: Sequence[int] = (256, 256),
        instruction_dim: int = 32,
        value_head: bool = False,
    ):
        check_own_vocabulary(tokenizer, action_dim, self.name)
        if state_dim < 1 or not hidden or min(hidden) < 1 or instruction_dim < 1:
            raise ValueError(
                f"need state_dim, instruction_dim and every hidden width >= 1, got state_dim={state_dim}, "
                f"hidden={list(hidden)}, instruction_dim={instruction_dim}"
            )
        super().__init__(tokenizer, action_dim)
        self.state_dim, self.hidden, self.value_head_enabled = (
            int(state_dim),
            [int(h) for h in hidden],
            bool(value_head),
        )
        self.instruction = InstructionEncoder(
            resolve_vocabulary(instructions, vocabulary, self.name), instruction_dim
        )
        n_in = self.state_dim + instruction_dim
        self.actor = mlp([n_in, *self.hidden, action_dim * tokenizer.vocab_size])
        self.critic = mlp([n_in, *self.hidden, 1]) if value_head else None

    @classmethod
    def tiny_config(cls) -> dict[str, Any]:
        """A few thousand parameters, for tests and smoke runs."""
        return {
            "state_dim": 5,
            "instructions": ["pick up the red cube", "push the cube forward"],
            "hidden": [32, 32],
            "instruction_dim": 8,
            "value_head": True,
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            "state_dim": self.state_dim,
            "vocabulary": list(self.instruction.vocabulary),
            "action_dim": self.action_dim,
            "hidden": list(self.hidden),
            "instruction_dim": self.instruction.dim,
            "value_head": self.value_head_enabled,
        }

    @classmethod
    def for_task(cls, *, state_dim: int, action_stats: Mapping[str, Any], instructions: Sequence[str],
                 preset: str, value_head: bool, seed: int) -> StateTokenPolicy:
        return build_for_task(cls, state_dim, action_stats, instructions, preset, value_head, seed)

    def add_instruction(self, text: str, init_from: str | None = None) -> list[str]:
        """Teach the policy a new task's instruction (see ``InstructionEncoder.add_instruction``): with
        ``init_from``, the policy acts on ``text`` as it does on ``init_from``. Returns the new words."""
        return self.instruction.add_instruction(text, init_from)

    def _inputs(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        words = self.instruction(obs.instruction)
        return check_state(obs, self.state_dim, self.name).to(words.device), words

    def action_logits(self, obs: ObsBatch, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, n_bins); ``tokens`` are ignored (the heads are independent given the observation)."""
        state, words = self._inputs(obs)
        return self.actor(torch.cat([state, words], dim=-1)).reshape(len(obs), self.action_dim, -1)

    def value(self, obs: ObsBatch) -> torch.Tensor:
        if self.critic is None:
            return super().value(obs)
        state, words = self._inputs(obs)
        return self.critic(torch.cat([state, words.detach()], dim=-1)).squeeze(-1)
