"""Every forgetting predictor of a fine-tuned model against its base, from outputs, weights and activations.

The ParityMNIST track and the robot experiment name and compute their predictors the same way
(``PREDICTORS``), so their R^2 tables line up:

* output distributions, on new-task (``_new``) and old-task (``_old``) inputs: ``forward_kl`` KL(pi0 || pi),
  ``reverse_kl`` KL(pi || pi0), ``tv`` and ``l2``. With D action positions per input (a robot action is D
  tokens), the KLs are summed over the positions (the whole action's KL by the chain rule, when the
  positions are teacher-forced on pi0's tokens) and TV and L2 are averaged over them (per-token distances
  in [0, 1] and [0, sqrt 2]); then each is averaged over inputs. With D = 1 (ParityMNIST) both readings agree;
* order-aware output distances (``vla_cl.kl.ordered``), where each support column stands for an ordered physical
  value (robot action bins; ``values`` given): ``w1`` (Wasserstein-1 over the bin values), ``smooth_kl`` (the
  forward KL after Gaussian smoothing over neighbouring bins) and ``mean_action`` (|change of the expected
  action|), each summed over the action positions, on new- and old-task inputs. Classes and language tokens
  have no order: ParityMNIST and the LLM track leave them out (``UNORDERED_PREDICTORS``);
* ``forward_kl_onpolicy``: the forward KL on new-task states that pi itself visits (teacher-forced on pi's
  tokens) rather than pi0's; robots only, where pi's rollouts are collected for it;
* weights, on theta - theta0 over the parameters both models share: ``weight_l1`` (sum |delta|),
  ``weight_fisher_l2`` (sum F delta^2, F = diagonal Fisher of pi0 on old-task inputs), ``weight_spectral``
  (largest singular value of any weight-matrix update);
* representations, on new-task inputs and on old-task inputs (``_old``): ``activation_l1`` /
  ``activation_l2``, the mean over inputs of ||h - h0||_p summed over the recorded hidden layers, and
  ``cka``, linear CKA between pi0's and pi's last recorded layer (1 = unchanged; it falls as forgetting grows).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from vla_cl.kl.divergences import Support, forward_kl, l2_distance, reverse_kl, total_variation
from vla_cl.kl.ordered import mean_action_change, smoothed_forward_kl, wasserstein_1
from vla_cl.kl.predictors import (
    activation_change,
    fisher_weighted_l2,
    linear_cka,
    update_spectral_norm,
    weight_change_l1,
)
from vla_cl.kl.sequence import check_mask

DISTRIBUTION_PREDICTORS = ("forward_kl", "reverse_kl", "tv", "l2")
ORDERED_PREDICTORS = ("w1", "smooth_kl", "mean_action")
WEIGHT_PREDICTORS = ("weight_l1", "weight_fisher_l2", "weight_spectral")
REPRESENTATION_PREDICTORS = ("activation_l1", "activation_l2", "cka")
ONPOLICY_PREDICTORS = ("forward_kl_onpolicy",)
UNORDERED_PREDICTORS = (
    *(f"{name}_{inputs}" for inputs in ("new", "old") for name in DISTRIBUTION_PREDICTORS),
    *WEIGHT_PREDICTORS,
    *(f"{name}{suffix}" for suffix in ("", "_old") for name in REPRESENTATION_PREDICTORS),
)
PREDICTORS = (
    *UNORDERED_PREDICTORS,
    *(f"{name}_{inputs}" for inputs in ("new", "old") for name in ORDERED_PREDICTORS),
    *ONPOLICY_PREDICTORS,
)
_DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tv": total_variation, "l2": l2_distance}
_ORDERED = {"w1": wasserstein_1, "smooth_kl": smoothed_forward_kl, "mean_action": mean_action_change}
_SUMMED = ("forward_kl", "reverse_kl", *_ORDERED)  # over action positions; the distances are averaged


def output_predictors(base_logits: torch.Tensor, logits: torch.Tensor, inputs: str,
                      support: Support = "action", mask: torch.Tensor | None = None,
                      values: torch.Tensor | None = None) -> dict[str, float]:
    """The four divergences between pi0's and pi's logits (n, D, V) on the same inputs, named ``<name>_<inputs>``,
    and with ``values`` (the physical value of each support column per position, (D, K); ``Policy.action_values``)
    the three order-aware ones.

    ``mask`` (n, D), True where a position counts, handles variable-length outputs (a language model's
    responses, padded to D tokens): sums and means run over each input's counted positions only."""
    if base_logits.ndim != 3 or base_logits.shape != logits.shape:
        raise ValueError(f"logits must both be (n, D, V) of one shape, got {tuple(base_logits.shape)} and "
                         f"{tuple(logits.shape)}")
    check_mask(mask, base_logits.shape[:-1])
    if mask is not None and not bool(mask.any(-1).all()):
        raise ValueError("mask leaves an input with no position: every input needs at least one counted position")
    weights = torch.ones(base_logits.shape[:-1], dtype=torch.float64) if mask is None else mask.cpu().to(torch.float64)
    out = {}
    divergences = dict(_DIVERGENCES)
    if values is not None:
        divergences |= {name: functools.partial(fn, values=values) for name, fn in _ORDERED.items()}
    for name, divergence in divergences.items():
        per_position = divergence(base_logits, logits, support=support).to(torch.float64).cpu()  # (n, D)
        per_position = per_position.masked_fill(weights == 0, 0.0)
        per_input = per_position.sum(-1) if name in _SUMMED else per_position.sum(-1) / weights.sum(-1)
        out[f"{name}_{inputs}"] = float(per_input.mean())
    return out


def weight_predictors(deltas: Mapping[str, torch.Tensor], fisher: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {"weight_l1": weight_change_l1(deltas), "weight_fisher_l2": fisher_weighted_l2(deltas, fisher),
            "weight_spectral": update_spectral_norm(deltas)}


def representation_predictors(base: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor],
                              suffix: str = "") -> dict[str, float]:
    """Activation change (L1, L2) over the recorded layers and CKA of the last one (by insertion order)."""
    last = list(base)[-1]
    return {f"activation_l1{suffix}": activation_change(base, current, p=1),
            f"activation_l2{suffix}": activation_change(base, current, p=2),
            f"cka{suffix}": linear_cka(base[last], current[last])}
