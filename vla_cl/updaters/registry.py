"""Updaters by name, imported only when used.

    updater = make_updater("ppo", optim={"lr": 1e-4}, clip_eps=0.1)     # validated PPOConfig
    list_updaters()                                        # ['distill', 'grpo', 'oracle_sft', ...]

Each name maps to ``"module:Class"`` of an :class:`~vla_cl.updaters.base.Updater` whose ``config_class``
is its config dataclass, in ``UPDATERS`` (a :class:`vla_cl.registry.Registry`). ``options_dataclass()`` builds the command line's view of them: one dataclass
with a ``name`` and every field any updater has (all optional, ``None`` = that updater's default), so
that ``vla-cl train updater=ppo updater.clip_eps=0.1 updater.optim.lr=1e-3`` is validated by hydra's schema and then by the
chosen updater's own config (``config_from_options``), which rejects options it does not have.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from vla_cl.config import option
from vla_cl.registry import Registry


def _check_updater(name: str, target: Any) -> None:
    # By what an Updater has rather than issubclass: base.Updater builds its config through this module,
    # so importing base here would close a circle.
    is_updater = isinstance(target, type) and all(
        callable(getattr(target, method, None)) for method in ("prepare", "objective")
    ) and isinstance(getattr(target, "config_class", None), type)
    if not is_updater or getattr(target, "name", None) != name:
        raise TypeError(f"updater {name!r} is registered as {target!r}, not an Updater named {name!r}")


UPDATERS: Registry[type] = Registry(
    "updater",
    {
        "ppo": "vla_cl.updaters.rl:PPO",
        "reinforce": "vla_cl.updaters.rl:Reinforce",
        "grpo": "vla_cl.updaters.rl:GRPO",
        "sft": "vla_cl.updaters.supervised:SFT",
        "sft_kl": "vla_cl.updaters.supervised:SFTKL",
        "rft": "vla_cl.updaters.supervised:RFT",
        "oracle_sft": "vla_cl.updaters.supervised:OracleSFT",
        "distill": "vla_cl.updaters.supervised:Distill",
    },
    check=_check_updater,
)


def register_updater(name: str, target: str | type, replace: bool = False) -> None:
    """Register an Updater class, or its ``"package.module:ClassName"`` to import lazily."""
    UPDATERS.register(name, target, replace)
    options_dataclass.cache_clear()  # the command line's view gains the new updater's fields


def list_updaters() -> list[str]:
    return UPDATERS.names()


def get_updater_class(name: str) -> type:
    return UPDATERS.get(name)


def make_updater(name: str, **options: Any):
    """A new updater with its config built (and validated) from ``options`` (``optim`` as a mapping of the
    optimiser fields to change, or an OptimizerConfig)."""
    return get_updater_class(name)(config_from_options({**options, "name": name}))


# ------------------------------------------------------------------------------------------ the CLI's view


@functools.cache
def options_dataclass() -> type:
    """A dataclass ``UpdaterOptions`` with ``name`` and, for every field of every registered updater's
    config, an optional field of that name (default ``None``) whose help says which updaters take it; a
    nested config (``optim``) becomes a nested dataclass of optional fields the same way. Built from the
    registry when first used (and again after ``register_updater``), so later updaters reach the command line."""
    configs = {updater: get_updater_class(updater).config_class for updater in list_updaters()}
    options = _options_of("UpdaterOptions", configs)
    options.__doc__ = "An updater's name and options, as the command line gives them (see options_dataclass)."
    return options


def _options_of(class_name: str, configs: dict[str, type]) -> type:
    helps: dict[str, dict[str, list[str]]] = {}  # field -> help text -> updaters with that text
    types: dict[str, Any] = {}
    nested: dict[str, dict[str, type]] = {}  # field -> updater -> its nested config class
    for updater, config_class in configs.items():
        hints = typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            helps.setdefault(field.name, {}).setdefault(field.metadata.get("help", ""), []).append(updater)
            base_type = hints[field.name]
            if dataclasses.is_dataclass(base_type):
                nested.setdefault(field.name, {})[updater] = base_type
            else:
                types.setdefault(field.name, base_type if type(None) in typing.get_args(base_type) else base_type | None)
    every = set(configs)
    fields: list[tuple] = []
    for field_name, by_text in helps.items():
        owners = [name for names in by_text.values() for name in names]
        if len(by_text) == 1:
            takers = "all" if set(owners) == every else ", ".join(owners)
            doc = f"{next(iter(by_text))} [{takers}]"
        else:
            doc = "; ".join(f"{', '.join(names)}: {text}" for text, names in by_text.items())
        if field_name == "name":
            fields.append(("name", str, option("ppo", f"the updater: {', '.join(configs)}")))
        elif field_name in nested:
            inner = _options_of(f"{class_name}_{field_name}", nested[field_name])
            fields.append((field_name, inner, dataclasses.field(default_factory=inner, metadata={"help": doc})))
        else:
            fields.append((field_name, types[field_name], option(None, f"{doc} (None = the updater's default)")))
    if "name" in helps:
        fields.sort(key=lambda f: f[0] != "name")
    options = dataclasses.make_dataclass(class_name, fields)
    options.__module__ = __name__
    return options


def config_from_options(options: Any):
    """The chosen updater's config from an ``UpdaterOptions`` (or a mapping with ``name``, nested mappings for
    nested configs): options left ``None`` take the updater's defaults; one set that the updater does not have
    is an error naming it."""
    values = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    name = values.pop("name", None)
    config_class = get_updater_class(name).config_class
    try:
        return _build(config_class, values, f"updater {name!r}", "updater.")
    except ValueError as error:  # name the field as the command line spells it
        message = str(error)
        if not message.startswith("invalid value for updater."):
            message = message.replace("invalid value for ", "invalid value for updater.", 1)
        raise ValueError(message) from None


def _build(config_class: type, values: dict[str, Any], owner: str, prefix: str) -> Any:
    hints = typing.get_type_hints(config_class)
    accepted = {f.name: f for f in dataclasses.fields(config_class)}
    given = {key: value for key, value in values.items() if value is not None and not _empty(value)}
    foreign = sorted(set(given) - set(accepted))
    if foreign:
        raise ValueError(f"invalid value for {prefix}{foreign[0]}: {owner} has no option {foreign[0]!r} "
                         f"(its options: {', '.join(sorted(accepted))})")
    for key, value in list(given.items()):
        if dataclasses.is_dataclass(hints[key]) and not isinstance(value, hints[key]):
            default = accepted[key].default_factory()  # the updater's own defaults for the nested config
            inner = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)
            merged = {**dataclasses.asdict(default), **{k: v for k, v in inner.items() if v is not None}}
            given[key] = _build(hints[key], merged, f"{owner}'s {key}", f"{prefix}{key}.")
    return config_class(**given)


def _empty(value: Any) -> bool:
    """A nested options value with nothing set (all None): the updater's defaults."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return isinstance(value, dict) and all(v is None or _empty(v) for v in value.values())
