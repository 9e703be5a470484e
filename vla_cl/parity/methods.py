"""The fine-tuning methods of the ParityMNIST experiment: what each learns from, as targets or rewards.

Every method trains the same model in the same loop (``train.finetune``); they differ only in the loss,
built here from the shared pure losses in ``vla_cl.updaters.losses``:

* ``grpo``: on-policy RL. G labels are sampled from pi for each image, rewarded 1 when their parity is the
  digit's, and reinforced with group-normalised advantages.
* ``grpo_kl``: the same plus ``kl_coef`` * KL(pi0 || pi) on the batch (the paper's coefficient: 0.1).
* ``sft1``: cross-entropy on one fixed label per parity: even -> 0, odd -> 1.
* ``sft2``: cross-entropy on two labels per parity, even -> {0, 4}, odd -> {1, 5}, as the soft target 1/2 each
  (the expected gradient of drawing one of the two at random, without its noise).
* ``oracle_sft``: cross-entropy on pi0 renormalised over the labels of the correct parity. Among all
  distributions that put no mass on wrong labels it is the one closest to pi0 in KL(q || pi0) (the
  I-projection; KL(pi0 || q) is infinite for every such q), so it is the least-forgetting target the
  paper's argument allows.
* ``distill``: cross-entropy on the distribution of an RL teacher (a GRPO-trained policy): SFT that
  learns what RL found, to show that the solution, not the algorithm, sets the forgetting.

Names follow the robot updaters (``vla_cl.updaters``) where the method is the same: ``grpo``, ``oracle_sft``
(pi0 restricted to the acceptable labels, ``losses.restricted_targets``, as the updater's window) and
``distill`` (the updater's default ``targets="distribution"``); ``grpo_kl`` is the updater ``grpo`` with
``kl_coef`` > 0, named as ``sft_kl`` is. ``sft1`` and ``sft2`` are the paper's SFT-1 and SFT-2 datasets, the
updater ``sft`` on one or two labels per parity.

Labels are action tokens of a 10-token vocabulary (ids 0..9, see ``model.TOKENIZER``); logits arrive as
(B, 1, 10) action-token logits.
"""

from __future__ import annotations

import torch

from vla_cl.kl import sample_tokens
from vla_cl.parity.model import N_LABELS, SUPPORT
from vla_cl.updaters.losses import (
    Terms,
    combine,
    group_advantages,
    kl_penalty_loss,
    policy_gradient_loss,
    restricted_targets,
    sft_loss,
)

METHODS = ("grpo", "grpo_kl", "sft1", "sft2", "oracle_sft", "distill")
RL_METHODS = ("grpo", "grpo_kl")
RENAMED = {"distill_sft": "distill"}  # old name -> the updaters' name; refused with a pointer to the new one
SFT2_LABELS = {0: (0, 4), 1: (1, 5)}  # parity -> the two labels SFT-2 teaches


def parity_reward(tokens: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """1.0 where a label token has the parity of its image's digit, else 0.0. ``digits`` broadcast against
    ``tokens`` from the left (digits (B,), tokens (B, G, 1) -> rewards (B, G, 1))."""
    labels = tokens - SUPPORT.start
    digits = digits.reshape(digits.shape + (1,) * (labels.ndim - digits.ndim))
    return (labels % 2 == digits % 2).to(torch.float32)


def correct_label_mask(digits: torch.Tensor) -> torch.Tensor:
    """(B, 1, 10) bool: True on the labels whose parity is the digit's."""
    labels = torch.arange(N_LABELS)
    return (labels % 2 == (digits % 2).unsqueeze(-1)).unsqueeze(1)


def sft1_targets(digits: torch.Tensor) -> torch.Tensor:
    """Label token ids (B, 1): 0 for even digits, 1 for odd ones."""
    return (digits % 2 + SUPPORT.start).unsqueeze(-1)


def sft2_targets(digits: torch.Tensor) -> torch.Tensor:
    """(B, 1, 10) distributions: 1/2 on {0, 4} for even digits, 1/2 on {1, 5} for odd ones."""
    targets = torch.zeros(digits.shape[0], 1, N_LABELS)
    for parity, labels in SFT2_LABELS.items():
        rows = digits % 2 == parity
        for label in labels:
            targets[rows, 0, label] = 0.5
    return targets


def oracle_targets(base_logits: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
    """(B, 1, 10) distributions: pi0 restricted to the correct-parity labels and renormalised."""
    return restricted_targets(base_logits, correct_label_mask(digits), SUPPORT)


def teacher_targets(teacher_logits: torch.Tensor) -> torch.Tensor:
    """(B, 1, 10) distributions: the teacher's predictive distribution."""
    return torch.softmax(teacher_logits.detach().float(), dim=-1)


def method_loss(
    method: str,
    logits: torch.Tensor,
    digits: torch.Tensor,
    base_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    group_size: int = 8,
    kl_coef: float = 0.1,
    generator: torch.Generator | None = None,
) -> Terms:
    """Named loss terms of ``method`` on one batch: action-token logits (B, 1, 10) of pi, the images'
    ``digits`` (B,), pi0's logits on the same images and, for ``distill``, the teacher's."""
    if method in RL_METHODS:
        batch = logits.shape[0]
        grouped = logits.unsqueeze(1).expand(batch, group_size, *logits.shape[1:])  # (B, G, 1, 10)
        tokens = sample_tokens(grouped.detach(), support=SUPPORT, generator=generator)  # (B, G, 1)
        rewards = parity_reward(tokens, digits).squeeze(-1)  # (B, G)
        terms = policy_gradient_loss(grouped, tokens, group_advantages(rewards), support=SUPPORT)
        terms["reward"] = rewards.mean()
        if method == "grpo_kl":
            terms = combine(terms, kl_penalty_loss(base_logits, logits, kl_coef, support=SUPPORT))
        return terms
    if method == "sft1":
        return sft_loss(logits, sft1_targets(digits), support=SUPPORT)
    if method == "sft2":
        return sft_loss(logits, sft2_targets(digits), support=SUPPORT)
    if method == "oracle_sft":
        return sft_loss(logits, oracle_targets(base_logits, digits), support=SUPPORT)
    if method == "distill":
        if teacher_logits is None:
            raise ValueError("distill needs teacher_logits (the RL teacher's logits on the batch)")
        return sft_loss(logits, teacher_targets(teacher_logits), support=SUPPORT)
    renamed = f" ({method!r} is now called {RENAMED[method]!r})" if method in RENAMED else ""
    raise ValueError(f"unknown method {method!r}{renamed}; choose from {', '.join(METHODS)}")
