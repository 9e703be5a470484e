"""Diagonal Fisher information of a categorical policy, for the Fisher-weighted weight-change predictor.

F_i = E_x E_{y ~ p_theta(.|x)} [ (d log p_theta(y|x) / d theta_i)^2 ], estimated on old-task inputs x at
theta0. The labels y are *sampled from the model's own predictive distribution* (``samples`` draws per
input), which makes this a Monte-Carlo estimate of the true (expected) Fisher used by EWC, not the
"empirical Fisher" with dataset labels, which measures fit to the labels rather than the curvature of the
model's output distribution. The square must be taken per input, so each input costs one backward pass;
that is fine for the probe-sized sets this is meant for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from vla_cl.kl.divergences import Support, check_logits, log_probs


def _select_params(model: nn.Module, params: Sequence[str] | None) -> dict[str, nn.Parameter]:
    named = dict(model.named_parameters())
    if params is None:
        chosen = {name: p for name, p in named.items() if p.requires_grad}
        if not chosen:
            raise ValueError("model has no trainable parameters: pass params=[names] to choose some")
        return chosen
    missing = [name for name in params if name not in named]
    if missing:
        raise ValueError(f"params {missing} are not parameters of the model")
    return {name: named[name] for name in params}


def _sampled_log_likelihood(
    logits: torch.Tensor, support: Support, generator: torch.Generator | None
) -> torch.Tensor:
    """log p(y|x) per input (dim 0) for labels y drawn from the logits themselves, summed over any other
    positions (e.g. the D action heads). Gradients flow through the log-probs, not the draw."""
    log_p = log_probs(logits, support)  # NaN/inf logits raise
    flat = log_p.detach().exp().reshape(-1, log_p.shape[-1])
    labels = torch.multinomial(flat, 1, generator=generator).reshape(log_p.shape[:-1] + (1,))
    return log_p.gather(-1, labels).squeeze(-1).reshape(log_p.shape[0], -1).sum(-1)


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[Any], torch.Tensor] | None = None,
    params: Sequence[str] | None = None,
    support: Support = None,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Diagonal Fisher for ``params`` (names; default: the parameters that require grad), averaged over
    every input in ``batches``. ``forward(batch)`` returns logits (B, ..., V) whose dim 0 indexes inputs
    (default ``model(batch)``). Frozen parameters named in ``params`` (e.g. a LoRA model's base weights)
    are unfrozen for the computation and restored afterwards."""
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    chosen = _select_params(model, params)
    forward = forward if forward is not None else model
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in chosen.items()}
    flags = {name: p.requires_grad for name, p in chosen.items()}
    n_inputs = 0
    try:
        for p in chosen.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch in batches:
                logits = forward(batch)
                check_logits("logits", logits)
                n_inputs += logits.shape[0]
                for _ in range(samples):
                    log_likelihood = _sampled_log_likelihood(logits, support, generator)
                    for i in range(log_likelihood.shape[0]):
                        grads = torch.autograd.grad(
                            log_likelihood[i], list(chosen.values()), retain_graph=True, allow_unused=True
                        )
                        for name, grad in zip(chosen, grads):
                            if grad is not None:
                                fisher[name] += grad.float() ** 2
    finally:
        for name, p in chosen.items():
            p.requires_grad_(flags[name])
    if n_inputs == 0:
        raise ValueError("batches was empty: the Fisher needs at least one input")
    return {name: f / (n_inputs * samples) for name, f in fisher.items()}
