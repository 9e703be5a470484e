"""KL between two policies over whole actions (sequences of D action tokens) and its estimators.

An action is D tokens a = (a_1, ..., a_D) and pi(a | x) = prod_d pi(a_d | x, a_<d). The chain rule of KL
splits the sequence KL into per-position terms:

    KL(pi0(.|x) || pi(.|x)) = sum_d E_{a_<d ~ pi0}[ KL(pi0(.|x, a_<d) || pi(.|x, a_<d)) ].

Teacher-forcing both policies on the same a ~ pi0 yields, at each position d, both conditionals on a
prefix a_<d drawn from pi0, so ``action_token_kl`` (the sum over d of the *exact* per-position KLs) is an
unbiased estimate of the sequence KL. The Monte-Carlo estimator log pi0(a) - log pi(a)
(``monte_carlo_kl``) has the same expectation; the chain-rule sum replaces each sampled log-ratio by its
exact expectation given the prefix, which removes the noise of drawing a_d itself (for D = 1 it is the
exact KL). It usually has far lower variance, though for D > 1 that is not guaranteed: later terms
still depend on the sampled prefix. When the D heads do not look at the prefix (an MLP with D
independent heads) the per-position distributions are fixed and the sum *is* the exact KL, with no
sampling at all. Teacher-forcing on actions from elsewhere (demonstrations, pi's own samples) measures
the KL along those prefixes instead, which is not KL(pi0 || pi).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from vla_cl.kl.divergences import (
    Support,
    check_logits,
    check_pair,
    compute_dtype,
    forward_kl,
    raise_if_nonfinite,
    resolve_support,
)


# eq=False: per_sample is a tensor, whose == is elementwise.
@dataclasses.dataclass(frozen=True, eq=False)
class KLEstimate:
    """A mean over samples (probe inputs, sampled actions) with its standard error."""

    mean: float  # the estimate: mean of per_sample
    std_error: float  # sample std / sqrt(n); NaN when n == 1
    n: int  # number of samples
    per_sample: torch.Tensor  # (n,) the values averaged, float32/float64 on the CPU

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.per_sample.shape != (self.n,):
            raise ValueError(f"per_sample must have shape ({self.n},), got {tuple(self.per_sample.shape)}")

    @classmethod
    def from_samples(cls, per_sample: torch.Tensor) -> KLEstimate:
        values = per_sample.detach().reshape(-1).cpu()
        n = values.numel()
        if n == 0:
            raise ValueError("per_sample must hold at least one value, got an empty tensor")
        wide = values.double()
        std_error = float(wide.std() / math.sqrt(n)) if n > 1 else float("nan")
        return cls(mean=float(wide.mean()), std_error=std_error, n=n, per_sample=values)


def check_mask(mask: torch.Tensor | None, shape: torch.Size) -> None:
    """A position mask must be a bool tensor shaped like the logits without the vocabulary dimension."""
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != shape:
        raise ValueError(
            f"mask must have shape {tuple(shape)} (the logits without the vocabulary), "
            f"got {tuple(mask.shape)}"
        )


def _masked_sum(per_position: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        per_position = per_position.masked_fill(~mask, 0.0)
    return per_position.sum(-1)


def _check_sequence(name: str, logits: torch.Tensor) -> None:
    check_logits(name, logits)
    if logits.ndim < 2:
        raise ValueError(f"{name} must have shape (..., D, V), got {tuple(logits.shape)}")


def action_token_kl(
    base_logits: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    support: Support = "action",
) -> torch.Tensor:
    """Chain-rule estimate of KL(pi0 || pi) per action: logits (..., D, V) teacher-forced on a shared
    action, the exact per-position KLs summed over the D positions where ``mask`` (..., D) is True.
    Returns shape (...)."""
    _check_sequence("base_logits", base_logits)
    check_pair("base_logits", base_logits, "logits", logits)
    check_mask(mask, base_logits.shape[:-1])
    return _masked_sum(forward_kl(base_logits, logits, support), mask)


def action_log_probs(logits: torch.Tensor, tokens: torch.Tensor, support: Support = "action") -> torch.Tensor:
    """log pi(a_d | x, a_<d) of the given token ids (..., D), normalised over the support. Shape (..., D)."""
    _check_sequence("logits", logits)
    columns = resolve_support(support, logits.shape[-1])
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.is_complex():
        raise ValueError(
            f"tokens must be an integer tensor, got {getattr(tokens, 'dtype', type(tokens).__name__)}"
        )
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(f"tokens must have shape {tuple(logits.shape[:-1])}, got {tuple(tokens.shape)}")
    outside = (tokens < columns.start) | (tokens >= columns.stop)
    if bool(outside.any()):
        index = tuple(int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"tokens must lie in the action slice [{columns.start}, {columns.stop}), "
            f"got {int(tokens[index])} at {index}"
        )
    sliced = logits[..., columns].to(compute_dtype(logits.dtype))
    picked = sliced.gather(-1, (tokens.long() - columns.start).unsqueeze(-1)).squeeze(-1)
    out = picked - torch.logsumexp(sliced, dim=-1)
    if not bool(torch.isfinite(out).all()):
        raise_if_nonfinite("logits", logits)
    return out


def log_ratio(
    base_logits: torch.Tensor,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    support: Support = "action",
) -> torch.Tensor:
    """log pi0(a) - log pi(a) per action (summed over the masked positions). Shape (...)."""
    check_pair("base_logits", base_logits, "logits", logits)
    check_mask(mask, base_logits.shape[:-1])
    diff = action_log_probs(base_logits, tokens, support) - action_log_probs(logits, tokens, support)
    return _masked_sum(diff, mask)


def monte_carlo_kl(
    base_logits: torch.Tensor,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
    support: Support = "action",
) -> KLEstimate:
    """Monte-Carlo KL(pi0 || pi): the mean of log pi0(a) - log pi(a) over actions a ~ pi0 (``tokens``,
    with the logits teacher-forced on them), with its standard error. Unbiased only if a ~ pi0."""
    return KLEstimate.from_samples(log_ratio(base_logits, logits, tokens, mask, support))


def sample_tokens(
    logits: torch.Tensor, support: Support = "action", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one token id per position from softmax(logits) over the support, independently per position
    (exact for independent heads; an autoregressive policy must sample with its own decoding loop)."""
    _check_sequence("logits", logits)
    columns = resolve_support(support, logits.shape[-1])
    probs = torch.softmax(logits[..., columns].to(compute_dtype(logits.dtype)), dim=-1)
    if not bool(torch.isfinite(probs).all()):
        raise_if_nonfinite("logits", logits)
    flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return flat.reshape(probs.shape[:-1]) + columns.start
