"""Policies by name, imported only when used.

Each policy is registered as ``"module:Class"`` in ``POLICIES`` (a :class:`vla_cl.registry.Registry`) and
imported on first use, so listing policies or loading a 50 k-parameter checkpoint never imports
transformers or OpenVLA's code::

    policy = make_policy("state_token", tokenizer=ActionTokenizer(256, 256, stats), state_dim=16,
                         instructions=["pick up the red cube", ...])
    policy = load_policy("runs/.../pi0")        # whichever policy the checkpoint records

``load_policy`` reads the folder's ``config.json``: a generic checkpoint (``vla_cl.policies.checkpoint``)
records the policy's name under ``policy``; a checkpoint in a policy's own format is recognised by a
``model_type`` equal to a registered name (OpenVLA's Hugging Face ``config.json`` says ``"openvla"``).
The class's ``from_pretrained`` then reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vla_cl.registry import Registry

if TYPE_CHECKING:
    from vla_cl.policies.base import Policy


def _check_policy(name: str, target: Any) -> None:
    from vla_cl.policies.base import Policy

    if not (isinstance(target, type) and issubclass(target, Policy)):
        raise TypeError(f"policy {name!r} is registered as {target!r}, which is not a Policy subclass")
    if target.name != name:
        raise TypeError(f"policy {name!r} is registered as {target.__name__}, whose name is {target.name!r}")


POLICIES: Registry[type[Policy]] = Registry(
    "policy",
    {
        "state_token": "vla_cl.policies.state_policy:StateTokenPolicy",
        "small_vlm": "vla_cl.policies.small_vlm:SmallVLMPolicy",
        "openvla": "vla_cl.policies.openvla:OpenVLAPolicy",
    },
    check=_check_policy,
    plural="policies",
)


def register_policy(name: str, target: str | type, replace: bool = False) -> None:
    """Register a policy class, or its ``"package.module:ClassName"`` to import lazily."""
    POLICIES.register(name, target, replace)


def list_policies() -> list[str]:
    return POLICIES.names()


def get_policy_class(name: str) -> type[Policy]:
    """The class registered as ``name`` (imported now if registered lazily)."""
    return POLICIES.get(name)


def make_policy(name: str, **config: Any) -> Policy:
    """A new policy: ``get_policy_class(name)(**config)`` (the small policies take ``tokenizer=`` and
    their config fields; see each class)."""
    return get_policy_class(name)(**config)


def checkpoint_policy_name(folder: str | Path) -> str:
    """The registered policy a checkpoint folder holds (ValueError for a folder that is none)."""
    from vla_cl.policies.checkpoint import FORMAT, read_config_json

    config = read_config_json(folder)
    if config.get("format") == FORMAT:
        name = config.get("policy")
        if name not in POLICIES:
            raise ValueError(f"{folder} holds a policy {name!r} that is not registered; registered policies: "
                             f"{', '.join(list_policies())}")
        return name
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in POLICIES:
        return model_type
    raise ValueError(
        f"{folder} is not a policy checkpoint this library knows: its config.json has neither "
        f"format={FORMAT!r} nor a model_type naming a registered policy (got format={config.get('format')!r}, "
        f"model_type={model_type!r}; registered: {', '.join(list_policies())})"
    )


def load_policy(folder: str | Path, **options: Any) -> Policy:
    """Load any saved policy; ``options`` go to its class's ``from_pretrained`` (e.g. ``unnorm_key``)."""
    return get_policy_class(checkpoint_policy_name(folder)).from_pretrained(folder, **options)


def load_policy_on(folder: str | Path, device: str = "cpu") -> Policy:
    """Load any saved policy to act as saved, on ``device`` (OpenVLA-7B straight onto a GPU in bf16)."""
    cls = get_policy_class(checkpoint_policy_name(folder))
    return cls.from_pretrained(folder, **cls.load_options(None, device)).to(device)


def save_policy(policy: Policy, folder: str | Path, **options: Any) -> Path:
    """Save any policy in its checkpoint format (``policy.save_pretrained``); returns the folder."""
    return Path(policy.save_pretrained(folder, **options))
