"""Helpers for the typed config dataclasses that sit next to each component.

Every field carries a one-line help text (shown by ``vla-cl <command> --help``) and is validated in
``__post_init__`` with an error that names the field and the values it accepts.

Library code that runs a command's work from inside another (the razor's sweep trials, the continual
stages, the ParityMNIST stage) builds the command's config with :func:`build_config`: the dataclass
defaults, then ``configs/<command>.yaml`` and the chosen presets' YAML files, then typed values (plain
Python mappings keyed by field name, nested for nested configs), validated as one. Only ``vla_cl.cli``
turns ``key=value`` text into configs (with hydra).
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def option(default: Any, help: str, affects_results: bool = True) -> Any:
    """A dataclass field with a default and a help line; mutable defaults are copied per instance.

    ``affects_results=False`` marks execution-only settings (worker counts, progress bars): a run may be
    resumed with a different value for them.
    """
    metadata = {"help": help, "affects_results": affects_results}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def execution_only_keys(config: Any, prefix: str = "") -> set[str]:
    """Dotted names of the fields of a config dataclass (nested ones too) marked ``affects_results=False``."""
    keys: set[str] = set()
    if not dataclasses.is_dataclass(config):
        return keys
    for field in dataclasses.fields(config):
        if not field.metadata.get("affects_results", True):
            keys.add(prefix + field.name)
        keys |= execution_only_keys(getattr(config, field.name), f"{prefix}{field.name}.")
    return keys


def require(condition: bool, field: str, value: Any, allowed: str) -> None:
    """Raise ValueError naming ``field``, its bad ``value`` and what is ``allowed`` unless ``condition``."""
    if not condition:
        raise ValueError(f"invalid value for {field}: {value!r} (allowed: {allowed})")


def require_choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    require(value in choices, field, value, "one of " + ", ".join(map(str, choices)))


@dataclasses.dataclass
class RayConfig:
    """Where a command's parallel jobs run (``vla_cl.workers``); none of it changes a result."""

    executor: str = option("auto", "process, ray or auto (ray when installed)", affects_results=False)
    address: str | None = option(None, "a running Ray cluster, HOST:PORT or ray://HOST:PORT (None: a local Ray "
                                 "instance for this command)", affects_results=False)
    retries: int = option(2, "times a job whose Ray worker died is run again", affects_results=False)

    def __post_init__(self) -> None:
        require(self.executor in EXECUTORS, "ray.executor", self.executor, " or ".join(EXECUTORS))
        require(self.retries >= 0, "ray.retries", self.retries, "an integer >= 0")
        require(self.address is None or self.executor != "process", "ray.address", self.address,
                "None with ray.executor=process (an address asks for Ray)")


EXECUTORS = ("auto", "process", "ray")


@dataclasses.dataclass
class RunConfig:
    """Fields every command accepts."""

    out_dir: str | None = option(
        None, "run directory; None means runs/<command>/<timestamp>", affects_results=False
    )
    seed: int = option(0, "random seed for everything the run draws")
    ray: RayConfig = dataclasses.field(default_factory=RayConfig, metadata={
        "help": "where parallel jobs run: ray.executor (auto, process, ray), ray.address, ray.retries",
        "affects_results": False})

    def __post_init__(self) -> None:
        self.check_run_fields()

    def check_run_fields(self) -> None:
        """Validate the fields above. ``vla_cl.cli.compose`` calls this on every command's config, since a
        subclass's ``__post_init__`` need not chain to this one."""
        require(self.seed >= 0, "seed", self.seed, "an integer >= 0")


# ------------------------------------------------------------------------------------------ building configs


def config_dir() -> Path | None:
    """``configs/`` next to the package (editable installs), or ``$VLA_CL_CONFIG_DIR``."""
    override = os.environ.get("VLA_CL_CONFIG_DIR")
    if override:
        path = Path(override)
        if not path.is_dir():
            raise ValueError(f"VLA_CL_CONFIG_DIR={override} is not a folder; point it at the repo's configs/.")
        return path.resolve()
    path = Path(__file__).resolve().parent.parent / "configs"
    return path if path.is_dir() else None


def config_layers(command: str, presets: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The YAML layers of ``command``: ``configs/<command>.yaml`` and each ``configs/<command>/<group>/<name>.yaml``
    of ``presets`` ({group: name}), in that order, without hydra's ``defaults`` lists."""
    import yaml

    root = config_dir()
    files = [] if root is None else [root / f"{command}.yaml"]
    for group, name in (presets or {}).items():
        path = None if root is None else root / command / group / f"{name}.yaml"
        if path is None or not path.is_file():
            known = sorted(p.stem for p in path.parent.glob("*.yaml")) if path is not None and path.parent.is_dir() \
                else []
            raise ValueError(f"invalid value for {group}: unknown {group} {name!r} for {command!r} "
                             f"(known: {', '.join(known) or 'none'})")
        files.append(path)
    layers = []
    for path in files:
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            data.pop("defaults", None)
            layers.append(data)
    return layers


def build_config(cls: type, *layers: Mapping[str, Any]) -> Any:
    """An instance of config dataclass ``cls`` from its defaults and ``layers`` merged in order (later ones win;
    nested mappings merge into nested configs), type-checked by OmegaConf and validated by ``__post_init__``.
    A key that names no field is an error naming it and the valid ones."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for layer in layers:
        check_keys(cls, layer)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), *[OmegaConf.create(plain(layer))
                                                               for layer in layers])
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "config"
        raise ValueError(f"invalid value for {key}: {str(error).splitlines()[0]}") from None
    if isinstance(config, RunConfig):
        config.check_run_fields()
    return config


def merged(*mappings: Mapping[str, Any]) -> dict[str, Any]:
    """The mappings merged in order, nested mappings key by key (later values win)."""
    out: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in mapping.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merged(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def check_keys(cls: type, mapping: Mapping[str, Any], prefix: str = "") -> None:
    """Raise ValueError for the first key of ``mapping`` (nested mappings too) that names no field of ``cls``."""
    if not isinstance(mapping, Mapping):
        raise ValueError(f"invalid value for {prefix.rstrip('.') or cls.__name__}: {mapping!r} (allowed: a mapping "  # noqa: TRY004 (a user's config value)
                         f"of {cls.__name__} fields)")
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    for key, value in mapping.items():
        if key not in fields:
            raise ValueError(f"invalid value for {prefix}{key}: no such field (allowed: {', '.join(sorted(fields))})")
        nested = next((t for t in (fields[key], *typing.get_args(fields[key])) if dataclasses.is_dataclass(t)), None)
        if nested is not None and isinstance(value, Mapping):
            check_keys(nested, value, f"{prefix}{key}.")


def plain(value: Any) -> Any:
    """Dataclasses, mappings, paths and numpy/torch scalars as plain JSON/YAML values (a config as it is saved,
    or as a layer ``build_config`` merges)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value
