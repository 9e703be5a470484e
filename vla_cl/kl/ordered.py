"""Distances between action distributions that respect the order of the action bins.

A robot action token is one of K ordered bins, each standing for a physical value (OpenVLA: 256 ids whose
bin centres, un-normalised with the checkpoint's statistics, are metres, radians or a gripper command). The
paper's forward KL ignores that order: moving mass one bin over costs as much as moving it across the range,
and a policy that only sharpens around pi0's mode raises KL(pi0 || pi) without changing what it does. The
predictors here see the order, per action position, given the physical value of every support column of
that position (``values``, shape (D, K) or (K,) for one value table shared by every position):

* ``wasserstein_1``: W1 between pi0's and pi's distributions over those values,
  sum_k |F0(x_k) - F(x_k)| (x_(k+1) - x_k) with the columns sorted by value (F: the cumulative distribution);
  in the values' units. Sharpening around the same mode moves little mass far, so it costs little.
* ``smoothed_forward_kl``: KL(pi0 * g || pi * g) after both are blurred over neighbouring bins by a
  Gaussian kernel g of ``sigma`` bins (``SMOOTHING_SIGMA_BINS``), cut at 3 sigma; each bin spreads its mass
  over the bins within reach and the kernel is renormalised over those inside the range, so no mass is lost
  at the edges. Neighbours are neighbours in value order. A one-bin shift costs little; a policy that puts
  mass where pi0 had none within a few bins still costs a lot (the KL's sensitivity to new behaviour).
* ``mean_action_change``: |E_pi0[x] - E_pi[x]|, the change of the expected action, in the values' units.

Each returns the leading shape (n, D) of the logits, like ``vla_cl.kl.divergences``. Columns that decode to
the same value (OpenVLA's top two ids share a bin centre) are 0 apart and cost nothing to swap. With a
policy's teacher-forced logits, position d's distribution is conditional on pi0's tokens before it, as for
the KL.
"""

from __future__ import annotations

import functools
import math

import torch

from vla_cl.kl.divergences import (
    Support,
    check_pair,
    kl_from_log_probs,
    raise_if_nonfinite,
    support_log_softmax,
)

SMOOTHING_SIGMA_BINS = 2.0  # the kernel's standard deviation in bins: a few bins of OpenVLA's 256 (0.8 % of the range)
_REACH_SIGMAS = 3.0


def _values(values: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``values`` as (D, K) float64 for logits of ``shape`` (..., D, K), checked."""
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim == 1:
        values = values.expand(shape[-2], -1)
    if values.ndim != 2 or tuple(values.shape) != tuple(shape[-2:]):
        raise ValueError(f"values must be (D, K) = {tuple(shape[-2:])} or (K,) = ({shape[-1]},), one physical value "
                         f"per action position and support column, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values must be finite: every support column stands for a physical action value")
    return values


def _sorted_probs(base_logits: torch.Tensor, logits: torch.Tensor, values: torch.Tensor,
                  support: Support) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pi0's and pi's probabilities (n, D, K) and the values (D, K), every position's columns in value order."""
    check_pair("base_logits", base_logits, "logits", logits)
    if base_logits.ndim < 2:
        raise ValueError(f"logits must be (..., D, V), got shape {tuple(base_logits.shape)}")
    p = support_log_softmax(base_logits, support, torch.float64).exp()
    q = support_log_softmax(logits, support, torch.float64).exp()
    for name, raw, probs in (("base_logits", base_logits, p), ("logits", logits, q)):
        if not bool(torch.isfinite(probs.sum(-1)).all()):
            raise_if_nonfinite(name, raw)
    values = _values(values, p.shape)
    order = values.argsort(-1)
    return p.gather(-1, order.expand_as(p)), q.gather(-1, order.expand_as(q)), values.gather(-1, order)


def wasserstein_1(base_logits: torch.Tensor, logits: torch.Tensor, values: torch.Tensor,
                  support: Support = "action") -> torch.Tensor:
    """W1 between pi0's and pi's per-position distributions over the columns' physical values, shape (..., D)."""
    p, q, x = _sorted_probs(base_logits, logits, values, support)
    gaps = x.diff(dim=-1)  # (D, K - 1)
    return ((p.cumsum(-1) - q.cumsum(-1))[..., :-1].abs() * gaps).sum(-1)


def mean_action_change(base_logits: torch.Tensor, logits: torch.Tensor, values: torch.Tensor,
                       support: Support = "action") -> torch.Tensor:
    """|E_pi0[a_d] - E_pi[a_d]| per position, in the values' units, shape (..., D)."""
    p, q, x = _sorted_probs(base_logits, logits, values, support)
    return ((p - q) * x).sum(-1).abs()


@functools.lru_cache(maxsize=8)
def smoothing_kernel(k: int, sigma: float = SMOOTHING_SIGMA_BINS) -> torch.Tensor:
    """The (K, K) row-stochastic matrix that spreads bin i's mass over bins j within 3 sigma,
    proportional to exp(-(i - j)^2 / 2 sigma^2), renormalised over the bins inside the range."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number of bins > 0, got {sigma!r}")
    offsets = torch.arange(k, dtype=torch.float64)
    distance = offsets[:, None] - offsets[None, :]
    weights = torch.exp(-0.5 * (distance / sigma) ** 2) * (distance.abs() <= _REACH_SIGMAS * sigma)
    return weights / weights.sum(-1, keepdim=True)


def smoothed_forward_kl(base_logits: torch.Tensor, logits: torch.Tensor, values: torch.Tensor,
                        support: Support = "action", sigma: float = SMOOTHING_SIGMA_BINS) -> torch.Tensor:
    """KL(pi0 * g || pi * g) per position after Gaussian smoothing over neighbouring bins (in value order),
    shape (..., D)."""
    p, q, _ = _sorted_probs(base_logits, logits, values, support)
    kernel = smoothing_kernel(p.shape[-1], float(sigma))
    # every kernel row sums to 1, so the smoothed rows do too; a tiny floor keeps log 0 out of rows pi gives none
    p_s, q_s = (p @ kernel).clamp_min(1e-300), (q @ kernel).clamp_min(1e-300)
    return kl_from_log_probs(p_s.log(), q_s.log())
