"""The optimiser every updater uses (AdamW) and its learning-rate schedule as a pure function of the step.

The schedule is computed from the optimiser step index alone (no scheduler object with state of its
own), so a resumed run sets exactly the learning rate an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch

from vla_cl.updaters.base import SCHEDULES, OptimizerConfig


def lr_factor(schedule: str, step: int, total: int, warmup: int = 0) -> float:
    """Multiplier of the peak learning rate for 0-based optimiser ``step`` of ``total``.

    Warmup: (step + 1) / warmup for the first ``warmup`` steps (the first step already moves). Then,
    with progress p = (step - warmup) / (total - warmup) in [0, 1): constant 1; linear 1 - p; cosine
    (1 + cos(pi p)) / 2. The decay reaches 0 only after the last step."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= step < max(total, 1) or warmup < 0:
        raise ValueError(f"need 0 <= step < total and warmup >= 0, got step={step}, total={total}, warmup={warmup}")
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(parameters: list[torch.nn.Parameter], config: OptimizerConfig) -> torch.optim.AdamW:
    if not parameters:
        raise ValueError("the policy has no trainable parameters")
    # foreach: one fused update over all tensors (on a CPU it is several times faster for small models)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, config: OptimizerConfig, step: int, total: int,
           scale: float = 1.0) -> float:
    """Set the schedule's learning rate at ``step`` (times ``scale``: a KL budget's step-size control)."""
    lr = config.lr * lr_factor(config.schedule, step, total, config.warmup_steps) * scale
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
