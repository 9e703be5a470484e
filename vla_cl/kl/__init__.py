"""Forgetting predictors: the forward KL between the base policy pi0 and a fine-tuned pi over action
tokens (the paper's predictor), its estimators and probe, the alternative predictors of the paper's
Table 1, and the polynomial fit that ranks them.

``divergences``: per-distribution KL / reverse KL / total variation / L2 from logits, the action
support, and the shared log-softmax over it (``support_log_softmax``; ``log_probs`` validated) and
``entropy``. ``sequence``: KL over whole actions (chain rule, Monte Carlo). ``predictors`` and ``fisher``:
weight- and representation-space predictors. ``fit``: R^2 of forgetting against a predictor.
``probe``: ``KLProbe``, the KL of a policy on a fixed new-task probe set.
"""

from vla_cl.kl.divergences import (
    OPENVLA_ACTION_SLICE,
    entropy,
    forward_kl,
    kl_from_reference_terms,
    l2_distance,
    log_probs,
    reference_terms,
    resolve_support,
    reverse_kl,
    support_log_softmax,
    total_variation,
)
from vla_cl.kl.fisher import diagonal_fisher
from vla_cl.kl.fit import FitResult, fit_forgetting, r_squared, rank_predictors
from vla_cl.kl.predictors import (
    activation_change,
    collect_activations,
    fisher_weighted_l2,
    linear_cka,
    lora_weight_deltas,
    parameter_snapshot,
    update_spectral_norm,
    weight_change_l1,
    weight_deltas,
)
from vla_cl.kl.probe import KLProbe
from vla_cl.kl.sequence import (
    KLEstimate,
    action_log_probs,
    action_token_kl,
    log_ratio,
    monte_carlo_kl,
    sample_tokens,
)

__all__ = [
    "OPENVLA_ACTION_SLICE",
    "FitResult",
    "KLEstimate",
    "KLProbe",
    "action_log_probs",
    "action_token_kl",
    "activation_change",
    "collect_activations",
    "diagonal_fisher",
    "entropy",
    "fisher_weighted_l2",
    "fit_forgetting",
    "forward_kl",
    "kl_from_reference_terms",
    "l2_distance",
    "linear_cka",
    "log_probs",
    "log_ratio",
    "lora_weight_deltas",
    "monte_carlo_kl",
    "parameter_snapshot",
    "r_squared",
    "rank_predictors",
    "reference_terms",
    "resolve_support",
    "reverse_kl",
    "sample_tokens",
    "support_log_softmax",
    "total_variation",
    "update_spectral_norm",
    "weight_change_l1",
    "weight_deltas",
]
