"""LoRA bookkeeping for ``OpenVLAPolicy``: OpenVLA-layout names under peft, merged weights, adapter files.

peft renames what it wraps (``language_model.base_model.model.<name>``, ``q_proj.base_layer.weight``).
A checkpoint must keep OpenVLA's names, so ``canonical_tensors`` maps them back and, when merging,
adds each adapter's delta (``get_delta_weight``: scale * B @ A) to its base weight without touching the
live model. Adapters alone are saved in peft's own format (``adapter_model.safetensors`` +
``adapter_config.json``), one folder per wrapped module, next to ``adapter_info.json`` with the settings
a reload needs (which dataset's statistics, and those statistics).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_INFO = "adapter_info.json"
ADAPTER_NAME = "default"


def _unwrap(module: nn.Module) -> nn.Module:
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def canonical_tensors(
    module: nn.Module, prefix: str, merged: bool
) -> Iterator[tuple[str, tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]]:
    """``(OpenVLA name, shape, dtype, make)`` for the parameters of ``module`` (peft-wrapped or not)."""
    base = _unwrap(module)
    adapted = {name: layer for name, layer in base.named_modules() if hasattr(layer, "get_delta_weight")}
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        canonical = f"{prefix}.{owner}.{leaf}" if owner else f"{prefix}.{name}"
        make: Callable[[], torch.Tensor] = param.detach
        if merged and owner in adapted and leaf == "weight" and ADAPTER_NAME in adapted[owner].lora_A:
            layer = adapted[owner]
            make = lambda p=param, layer=layer: (p + layer.get_delta_weight(ADAPTER_NAME).to(p.dtype)).detach()
        yield canonical, tuple(param.shape), param.dtype, make


def save_adapters(policy: Any, folder: Path) -> Path:
    """Save the LoRA adapters in peft format (safetensors) plus ``adapter_info.json``."""
    if not policy.has_adapter:
        raise RuntimeError("no LoRA adapter to save; call add_lora() first (or save_pretrained for the weights)")
    folder.mkdir(parents=True, exist_ok=True)
    wrapped = [name for name in ("language_model", "projector") if hasattr(getattr(policy, name), "get_base_model")]
    for name in wrapped:
        getattr(policy, name).save_pretrained(str(folder / name), safe_serialization=True)
    info = {"modules": wrapped, "unnorm_key": policy.unnorm_key, "norm_stats": policy.config.norm_stats}
    (folder / ADAPTER_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return folder


def load_adapters(policy: Any, folder: Path, is_trainable: bool) -> None:
    """Attach adapters saved by ``save_adapters`` to a policy holding the base weights."""
    from peft import PeftModel

    info_path = folder / ADAPTER_INFO
    if not info_path.is_file():
        raise ValueError(f"{folder} is not an adapter folder saved by OpenVLAPolicy.save_adapter (no {ADAPTER_INFO})")
    if policy.has_adapter:
        raise RuntimeError("this policy already has a LoRA adapter; load adapters into a fresh base policy")
    info = json.loads(info_path.read_text())
    if info.get("unnorm_key") != policy.unnorm_key:
        raise ValueError(f"the adapter was trained acting with statistics {info.get('unnorm_key')!r}, this policy "
                         f"uses {policy.unnorm_key!r}; load the base with unnorm_key={info.get('unnorm_key')!r}")
    from safetensors.torch import load_file

    from vla_cl.policies.checkpoint import check_finite

    for name in info["modules"]:  # refused before anything is attached (peft would load NaN silently)
        weights = folder / name / "adapter_model.safetensors"
        if weights.is_file():
            check_finite(load_file(str(weights)), weights)
    policy.requires_grad_(False)
    for name in info["modules"]:
        wrapped = PeftModel.from_pretrained(getattr(policy, name), str(folder / name), is_trainable=is_trainable)
        setattr(policy, name, wrapped)
