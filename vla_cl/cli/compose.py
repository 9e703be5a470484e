"""Hydra at the edge: turn ``key=value`` overrides into a validated config dataclass.

Each subcommand's dataclass is registered in hydra's ConfigStore as ``<command>_schema``; a YAML file
``configs/<command>.yaml`` (optional) composes on top of it and may define groups of presets
(``configs/<command>/<group>/<option>.yaml``). Library code only ever sees the dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from omegaconf import OmegaConf

from vla_cl.config import RunConfig, config_dir


class ConfigError(ValueError):
    """A config key or value the command does not accept; the message names it and the valid choices."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _nested_dataclass(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a config dataclass accepts, nested dataclasses included."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.append(prefix + name)
        nested = _nested_dataclass(tp)
        if nested is not None:
            keys.extend(valid_keys(nested, f"{prefix}{name}."))
    return keys


def config_groups(command: str) -> dict[str, list[str]]:
    """Preset groups available for a command: {group: [option, ...]} from configs/<command>/<group>/*.yaml."""
    root = config_dir()
    folder = root / command if root else None
    if folder is None or not folder.is_dir():
        return {}
    return {
        group.name: sorted(p.stem for p in group.glob("*.yaml"))
        for group in sorted(folder.iterdir())
        if group.is_dir()
    }


def _check_override_keys(command: str, cls: type, overrides: list[str]) -> None:
    keys = set(valid_keys(cls))
    groups = config_groups(command)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(
                f"'{override}' is not an override; write key=value (valid keys: {', '.join(sorted(keys))})."
            )
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key in groups:
            if value not in groups[key]:
                raise ConfigError(
                    f"unknown {key} '{value}' for '{command}'. Valid choices: {', '.join(groups[key])}."
                )
            continue
        if key not in keys:
            choices = sorted(keys | set(groups))
            raise ConfigError(f"unknown config key '{key}' for '{command}'. Valid keys: {', '.join(choices)}.")


def _group_override(command: str, override: str, groups: dict[str, list[str]]) -> str:
    """``preset=quick`` -> ``+<command>/preset=quick``: hydra names a group by its path under configs/, and
    appending it puts it after ``_self_``, so the preset's values win over ``configs/<command>.yaml``.

    """
    key, _, value = override.partition("=")
    bare = key.lstrip("+~")
    return f"+{command}/{bare}={value}" if bare in groups else override


def _mapping_override(cls: type, override: str) -> str:
    """``rl_overrides={updater: {optim: {lr: 1e-3}}}`` -> ``++rl_overrides=...``: a field typed as a mapping holds
    keys the schema does not know, which hydra's struct mode refuses unless the override forces them in."""
    key = override.partition("=")[0]
    if key.startswith(("+", "~")):
        return override
    fields = _field_types(cls)
    head = key.split(".")[0]
    origin = typing.get_origin(fields.get(head)) or fields.get(head)
    return f"++{override}" if origin is dict else override


def _shadowed(override: str) -> bool:
    """A plain key sharing its name with a folder of configs/ (``suite=razor``; configs/suite/ holds the
    evaluation suites), which hydra would read as a choice in that config group: it is applied after
    composition instead (see ``compose``)."""
    root = config_dir()
    key = override.partition("=")[0]
    return root is not None and not key.startswith(("+", "~")) and (root / key.split(".")[0]).is_dir()


def compose(command: str, cls: type, overrides: list[str]) -> Any:
    """Compose ``configs/<command>.yaml`` (if any) over the dataclass defaults and apply overrides.

    Returns an instance of ``cls``; its ``__post_init__`` validation has run. Raises ConfigError.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _check_override_keys(command, cls, overrides)
    groups = config_groups(command)
    late = [o for o in overrides if o.partition("=")[0] not in groups and _shadowed(o)]
    overrides = [_mapping_override(cls, _group_override(command, o, groups)) for o in overrides if o not in late]
    schema = f"{command}_schema"
    ConfigStore.instance().store(name=schema, node=cls)
    root = config_dir()
    has_yaml = root is not None and (root / f"{command}.yaml").exists()
    GlobalHydra.instance().clear()
    try:
        if has_yaml:
            with initialize_config_dir(config_dir=str(root), version_base=None):
                cfg = hydra_compose(config_name=command, overrides=overrides)
            if late:  # keys were checked above; a mapping-valued field takes keys its schema does not list
                OmegaConf.set_struct(cfg, False)
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in late]))
        else:
            # No YAML for this command: the dataclass is the whole config.
            cfg = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.from_dotlist(overrides))
        _check_finite(command, OmegaConf.to_container(cfg, resolve=True))
        config = OmegaConf.to_object(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_composition_message(command, cls, exc)) from exc
    finally:
        GlobalHydra.instance().clear()
    if isinstance(config, RunConfig):
        config.check_run_fields()  # also for subclasses whose __post_init__ does not chain to RunConfig's
    return config


def _check_finite(command: str, node: Any, key: str = "") -> None:
    """Refuse inf and nan anywhere in the composed config (nested configs and lists too): no setting of this
    project means anything at infinity, and a nan compares False with every bound ``__post_init__`` checks."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"invalid value for {key}: {node} ('{command}' takes finite numbers only, not inf "
                          "or nan)")
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, child in children:
        child_key = f"{key}[{name}]" if isinstance(node, list) else f"{key}.{name}".lstrip(".")
        _check_finite(command, child, child_key)


def _composition_message(command: str, cls: type, exc: BaseException) -> str:
    """Name the key, the value given and the type expected when a value does not fit its field (hydra
    itself only says "Error merging override"); otherwise hydra's own message, with its cause."""
    from omegaconf.errors import OmegaConfBaseException

    causes, cause = [], exc
    while cause is not None and cause not in causes:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    for cause in causes:
        key = getattr(cause, "full_key", None)
        if isinstance(cause, OmegaConfBaseException) and key and getattr(cause, "value", None) is not None:
            expected = _expected_type(cls, key)
            if expected:
                return f"invalid value for {key}: {cause.value!r} is not {expected}"
    parts = [" ".join(line.strip() for line in str(exc).strip().splitlines()[:4])]
    for cause in causes[1:]:  # hydra's message may only say which override; its causes say what is wrong
        first = (str(cause).strip().splitlines() or [""])[0]
        if first and first != "None" and first not in parts[0]:
            parts.append(first)
    return f"invalid config for '{command}': {'; '.join(dict.fromkeys(parts))}"


def _expected_type(cls: type, key: str) -> str | None:
    """The declared type of dotted ``key`` in config dataclass ``cls``, in words (``an int``, ``a float or
    None``); None when ``key`` names no field."""
    tp: Any = cls
    for part in key.split("."):
        nested = _nested_dataclass(tp)
        if nested is None or part not in (fields := _field_types(nested)):
            return None
        tp = fields[part]
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    names = [getattr(a, "__name__", str(a).replace("typing.", "")) for a in args if a is not type(None)]
    words = " or ".join(("an " if name[0] in "aeiou" else "a ") + name for name in names)
    return words + (" or None" if type(None) in args else "")


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for each field; docs come from ``metadata={'help': ...}``."""
    rows = []
    for field in dataclasses.fields(cls):
        nested = _nested_dataclass(_field_types(cls)[field.name])
        if nested is not None:
            rows.extend(describe(nested, f"{prefix}{field.name}."))
            continue
        if field.default is not dataclasses.MISSING:
            default = repr(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            default = repr(field.default_factory())
        else:
            default = "(required)"
        rows.append((prefix + field.name, default, field.metadata.get("help", "")))
    return rows
