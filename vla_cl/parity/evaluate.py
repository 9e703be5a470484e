"""Accuracies, forgetting and every forgetting predictor of a fine-tuned ParityMNIST model, against pi0.

``Reference`` holds what is computed once from pi0: its logits on the held-out new- and old-task images,
its hidden activations on the old-task images, its parameters, and its diagonal Fisher on old-task
inputs. ``evaluate(model, reference)`` returns one flat dict of numbers:

* ``new_task_accuracy``: the argmax label has the digit's parity (held-out MNIST);
  ``new_task_reward``: the expected reward of a sampled label (mass on the correct parity);
* ``old_task_accuracy``: argmax = old-task class on the held-out old-task images; ``forgetting``: pi0's old-task
  accuracy minus this one (percentage points / 100);
* output-distribution predictors, each the mean over images of the per-image value, on new-task (``_new``)
  and old-task (``_old``) inputs: ``forward_kl`` KL(pi0 || pi), ``reverse_kl`` KL(pi || pi0), ``tv``, ``l2``;
* weight predictors on theta - theta0 over all parameters: ``weight_l1`` (sum |delta|),
  ``weight_fisher_l2`` (sum F delta^2, F = diagonal Fisher of pi0 on old-task inputs), ``weight_spectral``
  (largest singular value of any weight-matrix update);
* representation predictors on new-task images, like the forward KL (``activation_l1``, ``activation_l2``,
  ``cka``), and on old-task images (the same with ``_old``): activation change per hidden layer as the mean
  over images of ||h - h0||_p, summed over both hidden layers, and linear CKA between pi0's and pi's last
  hidden layer (1 = unchanged, so it falls as forgetting grows).

The order-aware predictors of robots (``w1``, ``smooth_kl``, ``mean_action``) do not apply: the labels are
classes with no order between them; nor does the on-policy KL (an image's label distribution does not change
which image comes next). ``PREDICTORS`` is therefore ``vla_cl.kl.compare.UNORDERED_PREDICTORS``.
"""

from __future__ import annotations

import dataclasses

import torch

from vla_cl.kl import collect_activations, diagonal_fisher, parameter_snapshot, weight_deltas
from vla_cl.kl.compare import (
    UNORDERED_PREDICTORS,
    output_predictors,
    representation_predictors,
    weight_predictors,
)
from vla_cl.parity.data import ParityData
from vla_cl.parity.methods import correct_label_mask
from vla_cl.parity.model import HIDDEN_LAYERS, SUPPORT, ParityMLP

__all__ = ["PREDICTORS", "Reference", "build_reference", "evaluate", "fisher_of"]
_EVAL_BATCH = 1024
PREDICTORS = UNORDERED_PREDICTORS  # see the module docstring


@dataclasses.dataclass
class Reference:
    """pi0's side of every comparison, computed once per sweep (``build_reference``)."""

    new_x: torch.Tensor  # held-out MNIST inputs (n, 785)
    new_digits: torch.Tensor
    old_x: torch.Tensor  # held-out old-task inputs (n, 785)
    old_labels: torch.Tensor
    new_logits: torch.Tensor  # pi0's action-token logits (n, 1, 10) on new_x
    old_logits: torch.Tensor  # ... and on old_x
    new_activations: dict[str, torch.Tensor]  # pi0's hidden activations on new_x
    old_activations: dict[str, torch.Tensor]  # ... and on old_x
    theta0: dict[str, torch.Tensor]  # pi0's parameters
    fisher: dict[str, torch.Tensor]  # diagonal Fisher of pi0 on old-task inputs
    old_task_accuracy: float  # pi0's, the zero of forgetting


@torch.no_grad()
def action_logits(model: ParityMLP, x: torch.Tensor) -> torch.Tensor:
    """(n, 1, 10) logits of ``model`` on ``x`` in evaluation batches."""
    return torch.cat([model.action_logits(x[i : i + _EVAL_BATCH]) for i in range(0, len(x), _EVAL_BATCH)])


def logits_and_activations(model: ParityMLP, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Action-token logits (n, 1, 10) and hidden activations of ``model`` on ``x`` from one forward pass."""
    batches = [x[i : i + _EVAL_BATCH] for i in range(0, len(x), _EVAL_BATCH)]
    logits: list[torch.Tensor] = []
    activations = collect_activations(
        model, list(HIDDEN_LAYERS), batches, forward=lambda b: logits.append(model.action_logits(b))
    )
    return torch.cat(logits), activations


def fisher_of(model: ParityMLP, data: ParityData, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of ``model`` on the old-task Fisher inputs (labels sampled from the model)."""
    x = torch.from_numpy(data.fisher_old.x)
    return diagonal_fisher(model, [x], forward=model.action_logits, support=SUPPORT, generator=generator)


def build_reference(pi0: ParityMLP, data: ParityData, fisher: dict[str, torch.Tensor]) -> Reference:
    new_x, old_x = torch.from_numpy(data.test_new.x), torch.from_numpy(data.test_old.x)
    old_labels = torch.from_numpy(data.test_old.y)
    new_logits, new_activations = logits_and_activations(pi0, new_x)
    old_logits, old_activations = logits_and_activations(pi0, old_x)
    return Reference(
        new_x=new_x,
        new_digits=torch.from_numpy(data.test_new.y),
        old_x=old_x,
        old_labels=old_labels,
        new_logits=new_logits,
        old_logits=old_logits,
        new_activations=new_activations,
        old_activations=old_activations,
        theta0=parameter_snapshot(pi0),
        fisher=fisher,
        old_task_accuracy=float((old_logits[:, 0].argmax(-1) == old_labels).float().mean()),
    )


def accuracies(
    new_logits: torch.Tensor, digits: torch.Tensor, old_logits: torch.Tensor, labels: torch.Tensor
) -> dict:
    correct = correct_label_mask(digits)[:, 0]
    new_probs = torch.softmax(new_logits[:, 0].float(), dim=-1)
    return {
        "new_task_accuracy": float(
            correct.gather(1, new_logits[:, 0].argmax(-1, keepdim=True)).float().mean()
        ),
        "new_task_reward": float((new_probs * correct).sum(-1).mean()),
        "old_task_accuracy": float((old_logits[:, 0].argmax(-1) == labels).float().mean()),
    }


def evaluate(model: ParityMLP, reference: Reference) -> dict[str, float]:
    """Every metric of ``model`` (see the module docstring) as a flat dict of floats."""
    model.eval()
    new_logits, new_activations = logits_and_activations(model, reference.new_x)
    old_logits, old_activations = logits_and_activations(model, reference.old_x)
    metrics = accuracies(new_logits, reference.new_digits, old_logits, reference.old_labels)
    metrics["forgetting"] = reference.old_task_accuracy - metrics["old_task_accuracy"]
    metrics.update(output_predictors(reference.new_logits, new_logits, "new", SUPPORT))
    metrics.update(output_predictors(reference.old_logits, old_logits, "old", SUPPORT))
    metrics.update(weight_predictors(weight_deltas(model, reference.theta0), reference.fisher))
    metrics.update(representation_predictors(reference.new_activations, new_activations))
    metrics.update(representation_predictors(reference.old_activations, old_activations, "_old"))
    model.train()
    return metrics
