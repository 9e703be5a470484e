"""Policies that emit distributions over discretised action tokens.

``base``: the interface (``Policy``, ``ObsBatch``, ``ActionSample``). ``registry``: policies by name
(``make_policy``, ``load_policy``, ``list_policies``, ``register_policy``). ``checkpoint``: the generic
safetensors + JSON checkpoint. ``state_policy`` and ``small_vlm``: the CPU-scale policies;
``instructions``: their word-level instruction encoder. ``openvla``: OpenVLA-7B.

Names are exported lazily: ``import vla_cl.policies`` imports neither torch nor any policy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActionSample": "vla_cl.policies.base",
    "ObsBatch": "vla_cl.policies.base",
    "Policy": "vla_cl.policies.base",
    "register_policy": "vla_cl.policies.registry",
    "make_policy": "vla_cl.policies.registry",
    "get_policy_class": "vla_cl.policies.registry",
    "list_policies": "vla_cl.policies.registry",
    "load_policy": "vla_cl.policies.registry",
    "save_policy": "vla_cl.policies.registry",
    "InstructionEncoder": "vla_cl.policies.instructions",
    "StateTokenPolicy": "vla_cl.policies.state_policy",
    "SmallVLMPolicy": "vla_cl.policies.small_vlm",
    "OpenVLAPolicy": "vla_cl.policies.openvla",
}

__all__ = [
    "ActionSample",
    "InstructionEncoder",
    "ObsBatch",
    "OpenVLAPolicy",
    "Policy",
    "SmallVLMPolicy",
    "StateTokenPolicy",
    "get_policy_class",
    "list_policies",
    "load_policy",
    "make_policy",
    "register_policy",
    "save_policy",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vla_cl.policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
