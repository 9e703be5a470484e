"""A KL budget for any updater: the KL probe's E[KL(pi0 || pi)] kept at or under ``kl_budget`` (nats per action).

    vla-cl train updater=sft kl_budget=0.5                      # adaptive coefficient (the default control)
    vla-cl train updater=ppo kl_budget=0.5 kl_control=stop      # end the run instead of going over

The loop measures the probe (pi0's new-task states, ``vla_cl.updaters.loop``) after every update and hands the
value d to :class:`KLBudget`, which answers whether the update stands:

* ``adaptive``: PPO's adaptive-KL controller (Schulman et al. 2017, "Proximal Policy Optimization Algorithms",
  section 4) on the explicit penalty beta * KL(pi0 || pi) that ``Updater.loss`` adds on the batch's states. Its
  target is d_targ = B / 1.5, so that the controller's upper band edge 1.5 d_targ is the budget itself: after an
  update with d < d_targ / 1.5 beta is halved, with d > 1.5 d_targ = B it is doubled. PPO lets such an update
  stand; here it is undone (weights and optimiser state as before the iteration, its data spent), so every
  policy the run measures, snapshots or saves is within the budget at the probe. beta starts at the updater's
  ``kl_coef`` when that is > 0, else at ``INITIAL_COEF``, and never falls below ``MIN_COEF``.
  An undone update also halves the learning rate of the updates after it (``lr_scale``, down to
  ``MIN_LR_SCALE``), and each update with d < d_targ / 1.5 doubles it back towards 1. beta alone cannot hold a
  budget an optimiser step can jump: at pi = pi0 the KL term has no gradient, and AdamW's step size does not
  shrink with the loss's scale (measured: SFT at lr 1e-2 passed B = 1 in its first step from pi0 on every one of
  its 40 iterations, beta doubling in vain).
* ``stop``: the update that goes over is undone and the run ends there (early stopping on the probe's KL), the
  penalty's weight stays the updater's ``kl_coef``.

Per iteration the metrics (and TensorBoard) hold ``kl/budget``, ``kl/coef`` (the beta the update used),
``kl/lr_scale`` (the learning-rate factor it used),
``kl/rejected`` (1 when the update was undone) and ``kl/proposed`` (the probe's KL after the update, before any
undo); ``kl/mean`` is the KL of the policy the iteration ends with. beta and the factor are saved in every
checkpoint, so a resumed run continues with the controller the uninterrupted run had.

The guarantee holds on the probe's states only, the quantity budgeted; another predictor's value (the smoothed KL,
W1) or the KL on other states can differ.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

KL_CONTROLS = ("adaptive", "stop")
INITIAL_COEF = 1.0  # beta's start when the updater has no KL term of its own (PPO's paper: "not important")
MIN_COEF = 1e-3  # halving stops here, so that a few doublings bring beta back when the KL climbs
BAND = 1.5  # PPO's band around d_targ
MIN_LR_SCALE = 1 / 1024  # ten halvings


class KLBudget:
    """The controller; ``coef`` is the penalty weight the next update uses."""

    def __init__(self, budget: float, control: str, kl_coef: float):
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"invalid value for kl_budget: {budget!r}; expected a finite number of nats > 0")
        if control not in KL_CONTROLS:
            raise ValueError(f"invalid value for kl_control: {control!r}; expected one of {', '.join(KL_CONTROLS)}")
        self.budget, self.control = float(budget), control
        self.coef = float(kl_coef) if (kl_coef > 0 or control == "stop") else INITIAL_COEF
        self.lr_scale = 1.0
        self.stopped = False

    @property
    def target(self) -> float:
        return self.budget / BAND

    def judge(self, kl: float) -> dict[str, float]:
        """Take the probe's KL after an update; returns the iteration's metrics. ``rejected`` tells the loop to
        undo the update (and, with ``stop``, ``stopped`` to end the run)."""
        used, scale = self.coef, self.lr_scale
        rejected = not kl <= self.budget  # a NaN KL is over any budget
        if self.control == "stop":
            self.stopped = rejected
        elif rejected:
            self.coef = max(2 * self.coef, MIN_COEF)
            self.lr_scale = max(self.lr_scale / 2, MIN_LR_SCALE)
        elif kl < self.target / BAND:
            self.coef = max(self.coef / 2, MIN_COEF)
            self.lr_scale = min(2 * self.lr_scale, 1.0)
        return {"kl/budget": self.budget, "kl/coef": used, "kl/lr_scale": scale, "kl/proposed": kl,
                "kl/rejected": float(rejected)}


class Undo:
    """The trainable weights and the optimiser state before an update, to put back when the update is rejected
    (copies in memory: the trainable parameters and their AdamW moments once more)."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer = params, optimizer
        self.saved: tuple[list[torch.Tensor], dict[str, Any]] | None = None

    def save(self) -> None:
        self.saved = ([p.detach().clone() for p in self.params], copy.deepcopy(self.optimizer.state_dict()))

    def restore(self) -> None:
        weights, state = self.saved
        with torch.no_grad():
            for param, value in zip(self.params, weights, strict=True):
                param.copy_(value)
        self.optimizer.load_state_dict(state)
