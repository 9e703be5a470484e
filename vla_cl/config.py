"""Helpers for the typed config dataclasses that sit next to each component.

Every field carries a one-line help text (shown by ``vla-cl <command> --help``) and is validated in
``__post_init__`` with an error that names the field and the values it accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional


def option(default: Any, help: str, affects_results: bool = True) -> Any:  # noqa: A002 (argparse's word)
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
class RunConfig:
    """Fields every command accepts."""

    out_dir: Optional[str] = option(
        None, "run directory; None means runs/<command>/<timestamp>", affects_results=False
    )
    seed: int = option(0, "random seed for everything the run draws")

    def __post_init__(self) -> None:
        self.check_run_fields()

    def check_run_fields(self) -> None:
        """Validate the fields above. ``vla_cl.cli.compose`` calls this on every command's config, since a
        subclass's ``__post_init__`` need not chain to this one."""
        require(self.seed >= 0, "seed", self.seed, "an integer >= 0")
