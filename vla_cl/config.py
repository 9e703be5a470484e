"""Helpers for the typed config dataclasses that sit next to each component.

Every field carries a one-line help text (shown by ``vla-cl <command> --help``) and is validated in
``__post_init__`` with an error that names the field and the values it accepts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional


def option(default: Any, help: str) -> Any:  # noqa: A002 (mirrors argparse's vocabulary)
    """A dataclass field with a default and a help line; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


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

    out_dir: Optional[str] = option(None, "run directory; None means runs/<command>/<timestamp>")
    seed: int = option(0, "random seed for everything the run draws")
