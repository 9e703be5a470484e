"""Pure loss functions shared by every fine-tuning loop: policy gradient (REINFORCE / GRPO), SFT cross-entropy
with hard or soft targets, an explicit KL(pi0 || pi) penalty, and PPO's actor-critic terms (clipped
surrogate on action log-probs, clipped or plain value regression, entropy bonus).

Shapes. ``logits`` hold one categorical distribution per leading index: (..., V) for a plain classifier, or
action-token logits (B, D, V) for a policy emitting D tokens per action. Actions/targets given as token ids
have shape ``logits.shape[:-1]`` and live in vocabulary space (e.g. OpenVLA's 31744..31999); ``support``
picks the columns a distribution is normalised over, exactly as in ``vla_cl.kl`` ("action": the action
slice for OpenVLA-width logits, every column for a small own vocabulary). ``mask`` (bool, same shape as
the ids) switches positions off, e.g. padded or unused action dimensions.

Reductions. ``"token_mean"`` averages over every unmasked position (each token weighs the same);
``"sequence_mean"`` needs (..., D) positions, sums over the last one (the D tokens of one action: the
action's log-probability or KL, by the chain rule) and averages over the rest.

Clipping. Both clipped losses use one surrogate, -min(rho A, clip(rho, 1 - eps, 1 + eps) A) with
rho = pi / pi_old (PPO, Schulman et al. 2017, arXiv 1707.06347), and differ only in what rho is the ratio
of, so each names its eps after it:

* ``ppo_policy_loss(clip_eps)``: the ratio of the whole action, pi(a|s) / pi_old(a|s), the product over
  its D tokens (pass each action's summed token log-probs). PPO's own definition, with the action as the
  unit; RL4VLA's PPO on OpenVLA (Liu et al. 2025, arXiv 2505.19789) clips OpenVLA's 7-token actions as a
  whole. ``PPOConfig.clip_eps``.
* ``policy_gradient_loss(token_clip_eps)``: the ratio of each token, pi(a_d|s, a_<d) / pi_old(a_d|s, a_<d),
  clipped separately, as GRPO does per token of a response (DeepSeekMath, Shao et al. 2024, arXiv
  2402.03300). ``token_clip_eps`` of ``reinforce`` and ``grpo``, for their passes after the first.

For one-token actions (ParityMNIST) the two coincide.

Every function returns a dict of named terms: differentiable scalars named ``loss_<term>``, detached
diagnostics under other names, and their sum under ``loss``. ``combine`` merges several such dicts (e.g.
GRPO's policy term with a KL penalty) and recomputes the total, so a loop sums and logs them uniformly.
"""

from __future__ import annotations

import functools

import torch

from vla_cl.kl import action_log_probs, entropy, forward_kl, support_log_softmax
from vla_cl.kl.divergences import Support, compute_dtype, resolve_support
from vla_cl.kl.sequence import check_mask

REDUCTIONS = ("token_mean", "sequence_mean")
Terms = dict[str, torch.Tensor]


def _check_mask(mask: torch.Tensor | None, shape: torch.Size) -> None:
    check_mask(mask, shape)
    if mask is not None and not bool(mask.any()):
        raise ValueError("mask selects no position: the loss would be 0/0")


def reduce_positions(values: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Average per-position ``values`` over unmasked positions (see the module docstring)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    _check_mask(mask, values.shape)
    weights = torch.ones_like(values) if mask is None else mask.to(values.dtype)
    if reduction == "token_mean":
        return (values * weights).sum() / weights.sum()
    if values.ndim < 2:
        raise ValueError(
            f"reduction='sequence_mean' needs positions (..., D), got values of shape {tuple(values.shape)}"
        )
    return (values * weights).sum(-1).mean()


def _total(terms: Terms) -> Terms:
    losses = [value for name, value in terms.items() if name.startswith("loss_")]
    if not losses:
        raise ValueError(f"no loss_* term among {sorted(terms)}")
    return {**terms, "loss": torch.stack([value.reshape(()) for value in losses]).sum()}


def combine(*parts: Terms) -> Terms:
    """Merge loss dicts (each from a function here) into one whose ``loss`` is the sum of every ``loss_*``."""
    merged: Terms = {}
    for part in parts:
        for name, value in part.items():
            if name == "loss":
                continue
            if name in merged:
                raise ValueError(f"term {name!r} appears twice; give the parts distinct names")
            merged[name] = value
    return _total(merged)


# ----------------------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """GRPO advantages. ``rewards`` (..., G) hold G sampled actions' rewards for the same input; each is
    compared with its group: (r - mean_G) / (std_G + eps), std over the group with ddof=0 (so a group with
    rewards {0, 1} in equal numbers gets advantages of exactly +-1). ``scale=False`` keeps r - mean_G
    (Dr. GRPO). A group whose rewards are all equal gets zero advantages: it carries no signal."""
    if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point() or rewards.ndim == 0:
        raise ValueError(
            f"rewards must be a float tensor of shape (..., G), got {getattr(rewards, 'shape', rewards)!r}"
        )
    if rewards.shape[-1] < 2:
        raise ValueError(
            f"a group needs G >= 2 samples per input, got rewards of shape {tuple(rewards.shape)}"
        )
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite")
    centred = rewards - rewards.mean(-1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(-1, unbiased=False, keepdim=True) + eps)


def baseline_advantages(
    rewards: torch.Tensor,
    baseline: torch.Tensor | float | None = None,
    mask: torch.Tensor | None = None,
    scale: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """REINFORCE with a baseline: r - b, where b is ``baseline`` (a running mean, a value estimate, ...) or,
    by default, the mean reward of the (masked) batch. ``scale=True`` also divides by the batch's reward
    std (ddof=0): reward normalisation, which makes the step size independent of the reward's units."""
    if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor, got {type(rewards).__name__}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards must be finite")
    _check_mask(mask, rewards.shape)
    weights = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    count = weights.sum()
    mean = (rewards * weights).sum() / count
    centred = rewards - (mean if baseline is None else baseline)
    if scale:
        std = torch.sqrt((((rewards - mean) ** 2) * weights).sum() / count)
        centred = centred / (std + eps)
    return centred * weights


# ----------------------------------------------------------------------------------------- losses


def clipped_surrogate(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    name: str = "clip_eps",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, elementwise: min(rho A, clip(rho, 1 - eps, 1 + eps) A) with
    rho = exp(log_probs - old_log_probs), for whatever unit the log-probs are of (a token, a whole action:
    see the module docstring). ``advantages`` broadcast against the log-probs; old log-probs and
    advantages are detached. Computed in the compute dtype of ``log_probs``. Returns (surrogate, rho,
    log rho, 1.0 where |rho - 1| > eps else 0.0). ``name``: the eps's name in the error."""
    if not 0.0 < clip_eps < 1.0:
        raise ValueError(f"{name} must lie in (0, 1), got {clip_eps!r}")
    dtype = compute_dtype(log_probs.dtype)
    log_ratio = log_probs.to(dtype) - old_log_probs.detach().to(dtype)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach().to(dtype)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    outside = ((ratio - 1.0).abs() > clip_eps).to(dtype)
    return surrogate, ratio, log_ratio, outside


def policy_gradient_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    old_log_probs: torch.Tensor | None = None,
    token_clip_eps: float = 0.2,
    reduction: str = "token_mean",
    support: Support = "action",
) -> Terms:
    """Policy-gradient loss for sampled ``actions`` (token ids, shape ``logits.shape[:-1]``).

    ``advantages`` has a prefix of the ids' shape (e.g. (B,) or (B, G) for (B, G, D) ids: one advantage per
    action, shared by its D tokens) or their full shape. Without ``old_log_probs`` this is REINFORCE/GRPO
    for one update on freshly sampled actions: -A log pi(a). With ``old_log_probs`` (log pi_old(a_d) per
    position, detached) it is GRPO's clipped surrogate on each token's ratio (``clipped_surrogate``, eps
    ``token_clip_eps``), for several updates on the same samples; both have the same gradient while
    pi == pi_old. Terms: ``loss_policy``; diagnostics ``log_prob`` (mean) and, when clipping,
    ``clip_fraction`` (share of clipped tokens)."""
    log_probs = action_log_probs(logits, actions, support)
    _check_mask(mask, log_probs.shape)
    if not isinstance(advantages, torch.Tensor) or advantages.shape != log_probs.shape[: advantages.ndim]:
        raise ValueError(
            f"advantages must have a prefix of shape {tuple(log_probs.shape)}, got {tuple(getattr(advantages, 'shape', ()))}"
        )
    advantages = advantages.detach().to(log_probs.dtype)
    advantages = advantages.reshape(advantages.shape + (1,) * (log_probs.ndim - advantages.ndim))
    terms: Terms = {}
    if old_log_probs is None:
        surrogate = advantages * log_probs
    else:
        if old_log_probs.shape != log_probs.shape:
            raise ValueError(
                f"old_log_probs must have shape {tuple(log_probs.shape)}, got {tuple(old_log_probs.shape)}"
            )
        surrogate, _, _, outside = clipped_surrogate(
            log_probs, old_log_probs, advantages, token_clip_eps, "token_clip_eps"
        )
        terms["clip_fraction"] = reduce_positions(outside, mask, "token_mean").detach()
    terms["loss_policy"] = -reduce_positions(surrogate, mask, reduction)
    terms["log_prob"] = reduce_positions(log_probs.detach(), mask, "token_mean")
    return _total(terms)


def _soft_targets(targets: torch.Tensor, n_support: int, shape: torch.Size) -> None:
    if targets.shape != shape + (n_support,):
        raise ValueError(
            f"soft targets must have shape {tuple(shape) + (n_support,)} (a distribution over the {n_support} "
            f"support columns per position), got {tuple(targets.shape)}"
        )
    sums = targets.sum(-1)  # finite sums of non-negative entries mean every entry is finite
    if not bool(torch.isfinite(sums).all()) or float(targets.min()) < 0:
        raise ValueError("soft targets must be finite and non-negative")
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
        worst = float((sums - 1).abs().max())
        raise ValueError(f"soft targets must sum to 1 over the support, got a row off by {worst:.3g}")


def gaussian_token_targets(tokens: torch.Tensor, sigma: float, support: range | slice) -> torch.Tensor:
    """Soft labels for behaviour cloning on discretised actions: around each target token id, a Gaussian over
    the support's neighbouring bins, q_j proportional to exp(-(j - t)^2 / (2 sigma^2)) with j and t positions
    in the support (adjacent token ids are adjacent bins), shape ``tokens.shape + (n_support,)``.

    Neighbouring bins are neighbouring actions, but hard labels treat them as unrelated classes, so a
    categorical head learns the ordering slowly; Gaussian targets ("HL-Gauss", Imani & White 2018; Farebrother
    et al. 2024) teach it directly. ``sigma`` is in bins; a target at the edge of the support gets the part of
    its Gaussian that lies inside, renormalised. ``support``: the token ids of the bins (``policy.action_support``)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 bins, got {sigma!r} (use hard targets for sigma = 0)")
    start, stop = support.start, support.stop
    if not bool(((tokens >= start) & (tokens < stop)).all()):
        raise ValueError(f"tokens must lie in the support [{start}, {stop}), got ids {int(tokens.min())}..{int(tokens.max())}")
    return _gaussian_table(stop - start, float(sigma)).to(tokens.device)[tokens.long() - start]


@functools.lru_cache(maxsize=8)
def _gaussian_table(n: int, sigma: float) -> torch.Tensor:
    """Row t: the Gaussian targets of a label at support position t (computed once per (n, sigma))."""
    positions = torch.arange(n, dtype=torch.float32)
    offsets = (positions[None, :] - positions[:, None]) / sigma
    return torch.softmax(-0.5 * offsets * offsets, dim=-1)


def restricted_targets(base_logits: torch.Tensor, allowed: torch.Tensor, support: Support = None) -> torch.Tensor:
    """pi0 restricted to the ``allowed`` tokens and renormalised, q_v = pi0_v 1[v allowed] / sum_{u allowed}
    pi0_u, per position over the support: float32 soft targets (..., n_support), pi0's logits detached.
    Among the distributions that only use allowed tokens this is the closest to pi0 in KL(q || pi0) (the
    I-projection), the target of oracle SFT (``updaters.supervised``, ``parity.methods``).

    ``allowed``: bool (..., n_support), True on the tokens a position may use; each needs at least one."""
    columns = resolve_support(support, base_logits.shape[-1])
    base = base_logits.detach()[..., columns].float()
    if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool or allowed.shape != base.shape:
        raise ValueError(
            f"allowed must be a bool tensor of shape {tuple(base.shape)} (the logits over the support), got "
            f"{getattr(allowed, 'dtype', type(allowed).__name__)} {tuple(getattr(allowed, 'shape', ()))}"
        )
    if not bool(allowed.any(-1).all()):
        raise ValueError("allowed leaves a position with no token: there is no distribution to renormalise")
    return torch.softmax(base.masked_fill(~allowed, float("-inf")), dim=-1)


def sft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
    support: Support = "action",
    name: str = "sft",
) -> Terms:
    """Cross-entropy of ``logits`` against ``targets``: token ids (shape ``logits.shape[:-1]``, hard labels:
    SFT/BC on demonstrations) or a float distribution over the support columns per position (shape
    ``logits.shape[:-1] + (n_support,)``: -sum_v q_v log pi_v, whose gradient is that of KL(q || pi); oracle
    SFT and distillation from a teacher). Term ``loss_<name>`` (``name="bc"`` for behaviour cloning)."""
    if targets.is_floating_point():
        columns = resolve_support(support, logits.shape[-1])
        _soft_targets(targets, columns.stop - columns.start, logits.shape[:-1])
        log_probs = support_log_softmax(logits, columns)
        # 0 * log 0 = 0: columns the target never uses contribute nothing even where pi assigns them -inf.
        per_position = -torch.where(targets > 0, targets.to(log_probs.dtype) * log_probs, 0.0).sum(-1)
    else:
        per_position = -action_log_probs(logits, targets, support)
    if not bool(torch.isfinite(per_position).all()):
        raise ValueError("logits give a non-finite cross-entropy (NaN/inf logits, or -inf on a target label)")
    return _total({f"loss_{name}": reduce_positions(per_position, mask, reduction)})


def kl_penalty_loss(
    base_logits: torch.Tensor,
    logits: torch.Tensor,
    coef: float,
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
    support: Support = "action",
) -> Terms:
    """``coef`` * KL(pi0 || pi), computed exactly over the support per position (no sampled k1/k3 estimate:
    with a few hundred action tokens the exact sum is cheap and has no variance). pi0's logits are
    detached. Terms: ``loss_kl``; diagnostic ``kl`` (the unweighted KL)."""
    if not coef >= 0.0:
        raise ValueError(f"coef must be >= 0, got {coef!r}")
    kl = reduce_positions(forward_kl(base_logits.detach(), logits, support), mask, reduction)
    return _total({"loss_kl": coef * kl, "kl": kl.detach()})


# ----------------------------------------------------------------------------------------- actor-critic (PPO)


def _check_like(name: str, tensor: torch.Tensor, shape: torch.Size) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.shape != shape:
        raise ValueError(
            f"{name} must be a float tensor of shape {tuple(shape)}, got "
            f"{getattr(tensor, 'dtype', type(tensor).__name__)} {tuple(getattr(tensor, 'shape', ()))}"
        )


def ppo_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    mask: torch.Tensor | None = None,
) -> Terms:
    """PPO's clipped surrogate on the log-probabilities of the actions taken.

    ``log_probs`` (any shape, differentiable): log pi(a|s) under the current policy; ``old_log_probs`` and
    ``advantages`` (same shape): log pi_old(a|s) under the policy that collected the data, and the
    advantages (both detached here). For actions of D tokens pass each action's summed token log-probs,
    so that the ratio is the whole action's, pi(a|s) / pi_old(a|s) (``policy_gradient_loss`` clips each
    token's ratio instead, with ``token_clip_eps``; see the module docstring).

    loss_policy = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) with rho = exp(log_probs - old_log_probs)
    (``clipped_surrogate``). Diagnostics (detached means): ``approx_kl`` = (rho - 1) - log rho, a
    non-negative and unbiased estimate of KL(pi_old || pi) from these samples; ``clip_fraction``: share of
    |rho - 1| > eps; ``ratio``: mean rho.
    """
    if not isinstance(log_probs, torch.Tensor) or not log_probs.is_floating_point():
        raise ValueError(f"log_probs must be a float tensor, got {type(log_probs).__name__}")
    _check_like("old_log_probs", old_log_probs, log_probs.shape)
    _check_like("advantages", advantages, log_probs.shape)
    surrogate, ratio, log_ratio, clipped = clipped_surrogate(log_probs, old_log_probs, advantages, clip_eps)
    with torch.no_grad():
        approx_kl = reduce_positions((ratio - 1.0) - log_ratio, mask, "token_mean")
        clip_fraction = reduce_positions(clipped, mask, "token_mean")
        mean_ratio = reduce_positions(ratio, mask, "token_mean")
    return _total(
        {
            "loss_policy": -reduce_positions(surrogate, mask, "token_mean"),
            "approx_kl": approx_kl,
            "clip_fraction": clip_fraction,
            "ratio": mean_ratio,
        }
    )


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor | None = None,
    clip_eps: float | None = None,
    coef: float = 0.5,
    mask: torch.Tensor | None = None,
) -> Terms:
    """The critic's regression loss: ``coef`` * mean(1/2 (V - R)^2) (the 1/2 of most PPO code, so value
    coefficients carry over), ``values`` V(s) differentiable, ``returns`` R detached targets.

    With ``clip_eps`` (which needs ``old_values``, the critic's values when the data was collected), each
    term is PPO2's pessimistic 1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2): the value
    cannot profit from moving more than eps away from V_old in one batch of updates.
    Terms: ``loss_value``; diagnostics ``value_error`` (mean (V - R)^2, unclipped, unweighted) and
    ``explained_variance`` = 1 - Var[R - V] / Var[R] (NaN when the returns do not vary).
    """
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise ValueError(f"values must be a float tensor, got {type(values).__name__}")
    _check_like("returns", returns, values.shape)
    if not coef >= 0.0:
        raise ValueError(f"coef must be >= 0, got {coef!r}")
    dtype = compute_dtype(values.dtype)
    values, returns = values.to(dtype), returns.detach().to(dtype)
    squared = (values - returns) ** 2
    if clip_eps is None:
        per_position = squared
    else:
        if old_values is None:
            raise ValueError("clip_eps needs old_values (the values the data was collected with)")
        _check_like("old_values", old_values, values.shape)
        if not clip_eps > 0.0:
            raise ValueError(f"clip_eps must be > 0 (or None for no clipping), got {clip_eps!r}")
        old = old_values.detach().to(dtype)
        clipped = old + (values - old).clamp(-clip_eps, clip_eps)
        per_position = torch.maximum(squared, (clipped - returns) ** 2)
    with torch.no_grad():
        error = reduce_positions(squared, mask, "token_mean")
        weights = torch.ones_like(returns) if mask is None else mask.to(dtype)
        count = weights.sum()

        def variance(x: torch.Tensor) -> torch.Tensor:
            mean = (x * weights).sum() / count
            return (((x - mean) ** 2) * weights).sum() / count

        spread = variance(returns)
        explained = 1.0 - variance(returns - values) / spread if spread > 0 else torch.tensor(float("nan"))
    return _total(
        {
            "loss_value": coef * 0.5 * reduce_positions(per_position, mask, "token_mean"),
            "value_error": error,
            "explained_variance": explained.to(dtype),
        }
    )


def entropy_bonus(
    logits: torch.Tensor,
    coef: float,
    mask: torch.Tensor | None = None,
    reduction: str = "token_mean",
    support: Support = "action",
) -> Terms:
    """-``coef`` * H(pi): minimising it raises the policy's entropy (exploration). H is the exact entropy
    of each position's distribution over the support; with ``"sequence_mean"`` the D positions of an
    action add up (for autoregressive policies, teacher-forced on the given prefixes: the chain rule's
    estimate of the whole action's entropy). Terms: ``loss_entropy``; diagnostic ``entropy``."""
    if not coef >= 0.0:
        raise ValueError(f"coef must be >= 0, got {coef!r}")
    # 0 log 0 = 0 inside: columns with -inf logits contribute nothing (instead of NaN).
    value = reduce_positions(entropy(logits, support), mask, reduction)
    return _total({"loss_entropy": -coef * value, "entropy": value.detach()})
