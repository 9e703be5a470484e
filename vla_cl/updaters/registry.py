"""Updaters by name, imported only when used.

    updater = make_updater("ppo", lr=1e-4, clip_eps=0.1)     # validated PPOConfig
    list_updaters()                                        # ['distill', 'grpo', 'oracle_sft', ...]

Each name maps to ``"module:Class"`` of an :class:`~vla_cl.updaters.base.Updater` whose ``config_class``
is its config dataclass. ``options_dataclass()`` builds the command line's view of them: one dataclass
with a ``name`` and every field any updater has (all optional, ``None`` = that updater's default), so
that ``vla-cl train updater=ppo updater.clip_eps=0.1`` is validated by hydra's schema and then by the
chosen updater's own config (``config_from_options``), which rejects options it does not have.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import typing
from typing import Any

from vla_cl.config import option

_REGISTRY: dict[str, str | type] = {
    "ppo": "vla_cl.updaters.rl:PPO",
    "reinforce": "vla_cl.updaters.rl:Reinforce",
    "grpo": "vla_cl.updaters.rl:GRPO",
    "sft": "vla_cl.updaters.supervised:SFT",
    "sft_kl": "vla_cl.updaters.supervised:SFTKL",
    "rft": "vla_cl.updaters.supervised:RFT",
    "oracle_sft": "vla_cl.updaters.supervised:OracleSFT",
    "distill": "vla_cl.updaters.supervised:Distill",
}


def register_updater(name: str, target: str | type, replace: bool = False) -> None:
    """Register an Updater class, or its ``"package.module:ClassName"`` to import lazily."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an updater name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not replace and _REGISTRY[name] != target:
        raise ValueError(f"updater {name!r} is already registered ({_REGISTRY[name]!r}); pass replace=True")
    _REGISTRY[name] = target
    options_dataclass.cache_clear()


def list_updaters() -> list[str]:
    return sorted(_REGISTRY)


def get_updater_class(name: str) -> type:
    from vla_cl.updaters.base import Updater

    if name not in _REGISTRY:
        raise ValueError(f"unknown updater {name!r}; registered updaters: {', '.join(list_updaters())}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module_name, class_name = target.split(":")
        target = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(target, type) and issubclass(target, Updater)) or target.name != name:
        raise TypeError(f"updater {name!r} is registered as {target!r}, not an Updater named {name!r}")
    _REGISTRY[name] = target
    return target


def make_updater(name: str, **options: Any):
    """A new updater with its config built (and validated) from ``options``."""
    return get_updater_class(name)(**options)


# ------------------------------------------------------------------------------------------ the CLI's view


@functools.cache
def options_dataclass() -> type:
    """A dataclass ``UpdaterOptions`` with ``name`` and, for every field of every registered updater's
    config, an optional field of that name (default ``None``) whose help says which updaters take it."""
    helps: dict[str, dict[str, list[str]]] = {}  # field -> help text -> updaters with that text
    types: dict[str, Any] = {}
    for updater in list_updaters():
        config_class = get_updater_class(updater).config_class
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            helps.setdefault(field.name, {}).setdefault(field.metadata.get("help", ""), []).append(updater)
            base_type = hints[field.name]
            types.setdefault(field.name, base_type if type(None) in typing.get_args(base_type) else base_type | None)
    every = set(list_updaters())
    fields = [("name", str, option("ppo", f"the updater: {', '.join(list_updaters())}"))]
    for field_name, by_text in helps.items():
        owners = [name for names in by_text.values() for name in names]
        if len(by_text) == 1:
            takers = "all" if set(owners) == every else ", ".join(owners)
            doc = f"{next(iter(by_text))} [{takers}]"
        else:
            doc = "; ".join(f"{', '.join(names)}: {text}" for text, names in by_text.items())
        fields.append((field_name, types[field_name], option(None, f"{doc} (None = the updater's default)")))
    options = dataclasses.make_dataclass("UpdaterOptions", fields)
    options.__module__ = __name__
    options.__doc__ = "An updater's name and options, as the command line gives them (see options_dataclass)."
    return options


def config_from_options(options: Any):
    """The chosen updater's config from an ``UpdaterOptions`` (or a mapping with ``name``): options left
    ``None`` take the updater's defaults; one set that the updater does not have is an error naming it."""
    values = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    name = values.pop("name", None)
    config_class = get_updater_class(name).config_class
    accepted = {f.name for f in dataclasses.fields(config_class)}
    given = {key: value for key, value in values.items() if value is not None}
    foreign = sorted(set(given) - accepted)
    if foreign:
        raise ValueError(
            f"invalid value for updater.{foreign[0]}: updater {name!r} has no option {foreign[0]!r} "
            f"(its options: {', '.join(sorted(accepted))})"
        )
    try:
        return config_class(**given)
    except ValueError as error:  # name the field as the command line spells it
        raise ValueError(str(error).replace("invalid value for ", "invalid value for updater.", 1)) from None
