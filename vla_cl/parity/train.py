"""Pretraining pi0 and fine-tuning it: the one training loop every ParityMNIST method shares.

``pretrain`` trains pi0 jointly on both tasks (paper, appendix B.3): MNIST images flagged +1 with a parity
label drawn uniformly from the five digits of the image's parity, and old-task images flagged -1 with
their class. By default the parity labels are drawn once, a fixed pretraining dataset: pi0 then prefers
particular labels for particular looks of a digit (on held-out digits ~3/4 of its mass sits on one
label), the reading of the paper under which our sweeps reproduce its forward-KL law.
``parity_labels=resample`` redraws them every epoch instead, so pi0 spreads its mass evenly over the five
correct labels; forgetting then saturates at small forward KL for SFT-1 and the law fits worse. ``finetune`` trains a copy of pi0 on the parity task only:
the method decides the loss (``methods.method_loss``), everything else (data order, optimiser, schedule,
evaluation points) is the same for all, and the model is evaluated at evenly spaced points of training.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch

from vla_cl.config import option, require, require_choice
from vla_cl.parity.data import ParityData
from vla_cl.parity.evaluate import Reference, action_logits, evaluate
from vla_cl.parity.methods import METHODS, method_loss
from vla_cl.parity.model import SUPPORT, ParityMLP
from vla_cl.updaters.base import SCHEDULES
from vla_cl.updaters.losses import sft_loss
from vla_cl.updaters.optim import lr_factor

PARITY_LABELS = ("fixed", "resample")


@dataclasses.dataclass
class PretrainConfig:
    """How pi0 is trained on both tasks before any fine-tuning."""

    epochs: int = option(40, "epochs over the 2 x data.n_pretrain pretraining images")
    lr: float = option(1e-3, "Adam learning rate")
    batch_size: int = option(64, "images per step")
    parity_labels: str = option("fixed", "parity labels drawn once (fixed) or redrawn every epoch (resample)")

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "pretrain.epochs", self.epochs, "an int >= 1")
        require_choice("pretrain.parity_labels", self.parity_labels, PARITY_LABELS)
        require(0 < self.lr <= 1, "pretrain.lr", self.lr, "a float in (0, 1]")
        require(self.batch_size >= 1, "pretrain.batch_size", self.batch_size, "an int >= 1")


@dataclasses.dataclass
class FinetuneConfig:
    """Settings every fine-tuning run shares (the sweep varies method, learning rate, schedule, epochs)."""

    batch_size: int = option(64, "parity images per step")
    group_size: int = option(8, "GRPO: labels sampled per image (the group its advantages are normalised in)")
    kl_coef: float = option(0.1, "grpo_kl: coefficient of the KL(pi0 || pi) penalty (paper: 0.1)")
    evals: int = option(4, "evenly spaced evaluations per run (the last one is the final model)")
    teacher_lr: float = option(3e-4, "distill: learning rate of the GRPO run that serves as teacher")
    teacher_epochs: int = option(4, "distill: epochs of the teacher's GRPO run")

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "finetune.batch_size", self.batch_size, "an int >= 1")
        require(self.group_size >= 2, "finetune.group_size", self.group_size, "an int >= 2")
        require(self.kl_coef >= 0, "finetune.kl_coef", self.kl_coef, "a float >= 0")
        require(self.evals >= 1, "finetune.evals", self.evals, "an int >= 1")
        require(0 < self.teacher_lr <= 1, "finetune.teacher_lr", self.teacher_lr, "a float in (0, 1]")
        require(self.teacher_epochs >= 1, "finetune.teacher_epochs", self.teacher_epochs, "an int >= 1")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run of the sweep."""

    method: str
    lr: float
    epochs: int
    schedule: str
    seed: int

    def __post_init__(self) -> None:
        require_choice("method", self.method, METHODS)
        require_choice("schedule", self.schedule, SCHEDULES)

    @property
    def run_id(self) -> str:
        """A file-name-safe id, unique within a sweep."""
        return f"{self.method}-lr{self.lr:.2e}-ep{self.epochs}-{self.schedule}-s{self.seed}"


@dataclasses.dataclass
class FinetuneData:
    """What every run reads: the fine-tuning images with pi0's (and the teacher's) logits on them, and the
    evaluation reference."""

    x: torch.Tensor  # (n, 785) parity images
    digits: torch.Tensor  # (n,)
    base_logits: torch.Tensor  # (n, 1, 10) pi0's logits on x: oracle targets and the KL penalty
    teacher_logits: torch.Tensor | None  # (n, 1, 10) the RL teacher's logits on x (distill)
    reference: Reference




def eval_steps(total: int, evals: int) -> list[int]:
    """Steps (1-based, after the update) at which a run is evaluated: ``evals`` evenly spaced, the last = ``total``."""
    return sorted({max(1, round(total * k / evals)) for k in range(1, evals + 1)})


def pretrain(data: ParityData, config: PretrainConfig, seed: int) -> ParityMLP:
    """pi0, trained jointly on parity (random correct-parity labels) and the old task."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ParityMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    x = torch.from_numpy(np.concatenate([data.pretrain_new.x, data.pretrain_old.x]))
    n_new = len(data.pretrain_new)
    for epoch in range(config.epochs):
        if epoch == 0 or config.parity_labels == "resample":  # digit parity + 2k, k uniform in 0..4
            parity_labels = data.pretrain_new.y % 2 + 2 * rng.integers(0, 5, size=n_new)
        labels = torch.from_numpy(np.concatenate([parity_labels, data.pretrain_old.y])) + SUPPORT.start
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            loss = sft_loss(model.action_logits(x[index]), labels[index].unsqueeze(-1), support=SUPPORT)[
                "loss"
            ]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def finetune_data(
    data: ParityData, pi0: ParityMLP, reference: Reference, teacher: ParityMLP | None
) -> FinetuneData:
    x = torch.from_numpy(data.finetune.x)
    return FinetuneData(
        x=x,
        digits=torch.from_numpy(data.finetune.y),
        base_logits=action_logits(pi0, x),
        teacher_logits=None if teacher is None else action_logits(teacher, x),
        reference=reference,
    )


def finetune(
    spec: RunSpec,
    pi0_state: dict[str, torch.Tensor],
    shared: FinetuneData,
    config: FinetuneConfig,
) -> tuple[ParityMLP, dict]:
    """Fine-tune a copy of pi0 with ``spec``; returns the model and a record with the spec, every
    evaluation (``checkpoints``) and the last one's metrics (``final``)."""
    started = time.perf_counter()
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    model = ParityMLP()
    model.load_state_dict(pi0_state)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    n = len(shared.digits)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * spec.epochs
    evaluate_after = set(eval_steps(total, config.evals))
    checkpoints, recent_losses = [], []
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=generator)
        start = (step % steps_per_epoch) * config.batch_size
        index = order[start : start + config.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = spec.lr * lr_factor(spec.schedule, step, total)

        terms = method_loss(
            spec.method,
            model.action_logits(shared.x[index]),
            shared.digits[index],
            shared.base_logits[index],
            None if shared.teacher_logits is None else shared.teacher_logits[index],
            group_size=config.group_size,
            kl_coef=config.kl_coef,
            generator=generator,
        )
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        recent_losses.append(float(terms["loss"].detach()))

        if step + 1 in evaluate_after:
            point = {
                "step": step + 1,
                "epoch": (step + 1) / steps_per_epoch,
                "train_loss": float(np.mean(recent_losses)),
            }
            point.update(evaluate(model, shared.reference))
            recent_losses = []
            checkpoints.append(point)
    record = {
        "run_id": spec.run_id,
        **dataclasses.asdict(spec),
        "steps": total,
        "checkpoints": checkpoints,
        "final": checkpoints[-1],
        "seconds": time.perf_counter() - started,
    }
    return model, record
