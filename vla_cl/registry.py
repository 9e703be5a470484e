"""One table type for everything looked up by name: policies, updaters, tasks and command-line verbs.

A :class:`Registry` maps names to objects or to ``"package.module:attr"`` references that are imported on
first use, so ``vla-cl --help``, ``list_policies()`` or loading a small checkpoint never import OpenVLA,
transformers or the simulator (the lazy registries of lerobot, lm-eval and ManiSkill)::

    POLICIES = Registry("policy", {"state_token": "vla_cl.policies.state_policy:StateTokenPolicy"},
                        check=is_policy_named)
    POLICIES.names()          # sorted, nothing imported
    POLICIES.get("state_token")  # imported now, checked by ``check``, kept for the next lookup
    POLICIES.register("mine", "my_package.policy:MyPolicy")  # a later entry, at run time

``modules`` are imported before the first lookup or listing, for tables whose entries are registered by
the module that defines them (the tasks); modules appended to that list later are imported on the next
lookup. An unknown name is a ``ValueError`` that lists the known ones. This module sits at the bottom of
the package: it imports nothing from ``vla_cl``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def is_reference(target: object) -> bool:
    """Whether ``target`` is a lazy ``"package.module:attr"`` reference (a string) rather than the object."""
    return isinstance(target, str)


def check_reference(ref: str) -> None:
    """Refuse a string that cannot be a ``"package.module:attr"`` reference."""
    module, colon, attr = ref.partition(":")
    if not colon or not module or not attr or ":" in attr:
        raise ValueError(f"a lazy target must be 'package.module:ClassName', got {ref!r}")


def load_reference(ref: str) -> Any:
    """The object ``"package.module:attr"`` names, importing its module now."""
    check_reference(ref)
    module, _, attr = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except AttributeError:
        raise ValueError(f"{ref!r} names no attribute {attr!r} of module {module!r}") from None


class Registry(Generic[T]):
    """Names -> objects (or lazy references to them), resolved, checked and cached on first ``get``.

    ``kind`` names an entry in errors ("policy", "task id"); ``plural`` defaults to ``kind + "s"``.
    ``check(name, obj)`` raises (TypeError) when an imported object is not what this table holds.
    Iteration and ``items()`` follow registration order (the order a help text lists); ``names()`` is sorted.
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T | str] | None = None,
        *,
        check: Callable[[str, Any], None] | None = None,
        plural: str | None = None,
        modules: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._check = check
        self._modules = modules  # kept by reference: a module appended later is imported on the next lookup
        self._imported: set[str] = set()
        self._targets: dict[str, T | str] = {}  # as registered (what a second registration is compared to)
        self._resolved: dict[str, T] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    # ------------------------------------------------------------------ registering

    def register(self, name: str, target: T | str, replace: bool = False) -> None:
        """Add ``target`` (an object, or its ``"package.module:attr"`` to import lazily) under ``name``.
        Registering the same target twice is a no-op; a different one needs ``replace=True``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if is_reference(target):
            check_reference(target)
        if name in self._targets and not replace:
            if self._targets[name] == target:
                return
            existing = self._targets[name]
            # A reference or a class reads well in a message; other entries (a task's spec) are too long.
            shown = f"as {existing!r}" if is_reference(existing) or isinstance(existing, type) else "differently"
            raise ValueError(f"{self.kind} {name!r} is already registered {shown}; pass replace=True to replace it")
        self._targets[name] = target
        self._resolved.pop(name, None)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (an entry registered for a while, e.g. by a test); unknown names raise."""
        if name not in self._targets:
            raise self.unknown(name)
        del self._targets[name]
        self._resolved.pop(name, None)

    def copy(self) -> Registry[T]:
        """An independent table with the same entries (tests register into a copy)."""
        other: Registry[T] = Registry(self.kind, check=self._check, plural=self.plural, modules=self._modules)
        other._imported = set(self._imported)
        other._targets = dict(self._targets)
        other._resolved = dict(self._resolved)
        return other

    # ------------------------------------------------------------------ looking up

    def _import_modules(self) -> None:
        for module in list(self._modules):
            if module not in self._imported:
                importlib.import_module(module)
                self._imported.add(module)

    def names(self) -> list[str]:
        """Every registered name, sorted, without importing any entry."""
        self._import_modules()
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        self._import_modules()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        self._import_modules()
        return iter(list(self._targets))

    def __len__(self) -> int:
        self._import_modules()
        return len(self._targets)

    def unknown(self, name: object) -> ValueError:
        """The error for a name that is not registered, listing those that are."""
        return ValueError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        """The entry registered as ``name``, imported now if it was registered lazily."""
        if name not in self:
            raise self.unknown(name)
        if name not in self._resolved:
            target = self._targets[name]
            obj = load_reference(target) if is_reference(target) else target
            if self._check is not None:
                self._check(name, obj)
            self._resolved[name] = obj
        return self._resolved[name]

    __getitem__ = get

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, entry) in registration order, each entry resolved (imported if lazy)."""
        return ((name, self.get(name)) for name in self)
