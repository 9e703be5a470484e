"""The paper's alternative forgetting predictors that look at weights and representations (Table 1).

They work on plain ``torch.nn.Module``s and tensors so the ParityMNIST MLP and the robot policies share
them. Distribution-level predictors (reverse KL, total variation, L2) live in ``divergences``.

Weight-space predictors take a mapping ``name -> delta`` (the update theta - theta0):
``weight_deltas`` builds it from a snapshot taken before fine-tuning, ``lora_weight_deltas`` from a peft
LoRA model (the update of a LoRA layer is its merged delta B A * scale on the base weight, keyed by the
base weight's parameter name, so a Fisher computed for those names lines up).

Representation predictors compare hidden activations of pi0 and pi on the same (old-task) inputs:
``collect_activations`` records chosen modules' outputs; run it once inside the reference context
(``model.disable_adapter()``) and once outside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

Deltas = Mapping[str, torch.Tensor]


def parameter_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of every floating-point parameter: theta0, to diff against after training."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.is_floating_point()}


def weight_deltas(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """theta - theta0 for every parameter named in ``reference`` (a ``parameter_snapshot``)."""
    params = dict(model.named_parameters())
    deltas = {}
    for name, before in reference.items():
        if name not in params:
            raise ValueError(f"reference names parameter {name!r}, which the model does not have")
        after = params[name].detach()
        if after.shape != before.shape:
            raise ValueError(
                f"reference[{name!r}] has shape {tuple(before.shape)}, the model's is {tuple(after.shape)}"
            )
        deltas[name] = after - before.to(after.device, after.dtype)
    return deltas


def lora_weight_deltas(model: nn.Module) -> dict[str, torch.Tensor]:
    """The update each LoRA layer applies to its base weight (sum over its active adapters), keyed by
    the base weight's parameter name (``<module>.base_layer.weight``)."""
    deltas = {}
    for name, module in model.named_modules():
        if not (hasattr(module, "get_delta_weight") and hasattr(module, "lora_A")):
            continue
        active = [a for a in module.active_adapters if a in module.lora_A]
        if active:
            deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a).detach() for a in active)
    if not deltas:
        raise ValueError("model has no active LoRA layers (is it a peft model with an adapter?)")
    return deltas


def _check_deltas(deltas: Deltas) -> None:
    if not deltas:
        raise ValueError("deltas must hold at least one tensor, got none")


def weight_change_l1(deltas: Deltas, normalize: bool = False) -> float:
    """sum |theta - theta0| over all entries (the paper's L1 weight change). ``normalize`` divides by the
    number of entries (mean absolute change), which compares models of different sizes."""
    _check_deltas(deltas)
    total = sum(float(d.double().abs().sum()) for d in deltas.values())
    return total / sum(d.numel() for d in deltas.values()) if normalize else total


def fisher_weighted_l2(deltas: Deltas, fisher: Mapping[str, torch.Tensor]) -> float:
    """sum F (theta - theta0)^2 with a diagonal Fisher F computed at theta0 on old-task inputs (EWC's
    penalty): change in directions the old task is sensitive to counts most."""
    _check_deltas(deltas)
    total = 0.0
    for name, delta in deltas.items():
        if name not in fisher:
            raise ValueError(f"fisher has no entry for {name!r} (compute it with params=list(deltas))")
        if fisher[name].shape != delta.shape:
            raise ValueError(
                f"fisher[{name!r}] has shape {tuple(fisher[name].shape)}, the delta {tuple(delta.shape)}"
            )
        total += float((fisher[name].double().to(delta.device) * delta.double() ** 2).sum())
    return total


def _largest_singular_value(matrix: torch.Tensor) -> float:
    """sigma_max(M) = sqrt(lambda_max(G)) with G the smaller Gram matrix (M M^T or M^T M): a symmetric
    eigenvalue problem on the short side, about twice as fast as a full SVD of a 512 x 785 update."""
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt())


def update_spectral_norm(deltas: Deltas, reduce: str = "max") -> float:
    """Largest singular value of each weight-matrix update (tensors of 2+ dims, flattened to
    (out, -1); biases and norms are skipped), reduced by ``"max"`` (the default: the single most
    stretched direction) or ``"sum"`` over matrices."""
    if reduce not in ("max", "sum"):
        raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")
    _check_deltas(deltas)
    norms = [
        _largest_singular_value(d.double().reshape(d.shape[0], -1))
        for d in deltas.values()
        if d.ndim >= 2
    ]
    if not norms:
        raise ValueError("deltas hold no matrix (2+ dims): the spectral norm needs weight matrices")
    return max(norms) if reduce == "max" else sum(norms)


def collect_activations(
    model: nn.Module,
    modules: Sequence[str] | Mapping[str, nn.Module],
    batches: Iterable[Any],
    forward: Callable[[Any], Any] | None = None,
    pool_tokens: bool = False,
) -> dict[str, torch.Tensor]:
    """Outputs of ``modules`` (names in ``model.named_modules()`` or name -> module) over ``batches``,
    concatenated along dim 0. ``forward(batch)`` runs the model (default ``model(batch)``). A module that
    returns a tuple (e.g. a transformer block) contributes its first element. ``pool_tokens``: an output
    with dims between the batch and the features (token positions) is averaged over them, (B, ..., H) ->
    (B, H), so a sequence model's representations cost one vector per input (kept on the CPU)."""
    if not isinstance(modules, Mapping):
        named = dict(model.named_modules())
        missing = [name for name in modules if name not in named]
        if missing:
            raise ValueError(f"modules {missing} not found in the model")
        modules = {name: named[name] for name in modules}
    if not modules:
        raise ValueError("modules must name at least one module, got none")
    forward = forward if forward is not None else model
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in modules}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            output = output.detach().float()
            if pool_tokens and output.ndim > 2:
                output = output.mean(dim=tuple(range(1, output.ndim - 1))).cpu()
            captured[name].append(output)

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                forward(batch)
    finally:
        for handle in handles:
            handle.remove()
    if any(not outputs for outputs in captured.values()):
        raise ValueError("no activations were recorded: batches was empty or the modules never ran")
    return {name: torch.cat(outputs) for name, outputs in captured.items()}


def activation_change(
    base_activations: torch.Tensor | Mapping[str, torch.Tensor],
    activations: torch.Tensor | Mapping[str, torch.Tensor],
    p: int = 2,
) -> float:
    """Per layer, the mean over inputs of ||h - h0||_p (each input's activations flattened); summed over
    layers. ``p=1`` and ``p=2`` are the paper's L1 and L2 activation change."""
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p!r}")
    if isinstance(base_activations, torch.Tensor):
        base_activations, activations = {"": base_activations}, {"": activations}
    if set(base_activations) != set(activations) or not base_activations:
        raise ValueError(f"layers differ: {sorted(base_activations)} vs {sorted(activations)}")
    total = 0.0
    for name, before in base_activations.items():
        after = activations[name]
        if before.shape != after.shape or before.ndim == 0:
            raise ValueError(
                f"activations[{name!r}] has shape {tuple(after.shape)}, the base {tuple(before.shape)}"
            )
        diff = (after.double() - before.double()).reshape(before.shape[0], -1)
        total += float(torch.linalg.vector_norm(diff, ord=p, dim=1).mean())
    return total


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between representations x (n, ...) and y (n, ...) of the same n
    inputs: ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc. 1 means the same
    representation up to rotation and isotropic scaling; 1 - CKA is a representation-change predictor."""
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(
            f"x and y must hold the same n >= 2 inputs in dim 0, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    xc = x.detach().double().reshape(x.shape[0], -1)
    yc = y.detach().double().reshape(y.shape[0], -1)
    xc = xc - xc.mean(0)
    yc = yc - yc.mean(0)
    denominator = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    if float(denominator) == 0.0:
        raise ValueError("x or y is constant across inputs: CKA is undefined")
    return float(torch.linalg.matrix_norm(yc.T @ xc) ** 2 / denominator)
