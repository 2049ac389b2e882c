"""Named components (models, datasets, tasks, ...) that recipes refer to by string.

There is one `Registry` per kind. Plugins fill them when they are imported; the first lookup in any registry
discovers the installed plugins (see `deepcourse.plugins`), so `import deepcourse` and `deepcourse --help` stay fast.
"""
from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import UserError, did_you_mean

T = TypeVar("T")

__all__ = [
    "Entry", "Registry", "RegistryError", "UnknownNameError",
    "MODELS", "DATASETS", "TASKS", "OPTIMIZERS", "SCHEDULERS", "TRANSFORMS", "METRICS", "CALLBACKS", "ALL",
]


class RegistryError(Exception):
    """A registration conflict: a programming error in a plugin, reported against that plugin."""


class UnknownNameError(UserError, KeyError):
    """A recipe or command named a component that nobody registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass
class Entry:
    name: str
    obj: Any
    origin: str  # plugin name ("vision"), "deepcourse" for the core, else the registering module
    module: str
    aliases: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """'plugin toy (toy_plugin)', 'deepcourse (deepcourse.optim)' or the registering module."""
        if self.origin == self.module:
            return f"module {self.module}"
        if self.origin == "deepcourse":
            return f"deepcourse ({self.module})"
        return f"plugin {self.origin} ({self.module})"

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """A name -> builder table with aliases, conflict detection and did-you-mean lookups."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # plural noun used in messages: "models"
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        obj: Any = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        override: bool = False,
        **meta: Any,
    ) -> Any:
        """Register `obj` under `name`; without `obj`, return a decorator. Returns `obj` unchanged."""
        if obj is None:
            def decorator(target: T) -> T:
                self.register(name, target, aliases=aliases, override=override, **meta)
                return target
            return decorator
        from . import plugins  # late: plugins imports this module

        name = name or getattr(obj, "__name__", None)
        if not name:
            raise RegistryError(f"{self.kind}: cannot register {obj!r} without a name")
        origin = plugins.current_origin(getattr(obj, "__module__", None)) or _origin_of(obj)
        entry = Entry(name, obj, origin, getattr(obj, "__module__", "?") or "?", tuple(aliases), dict(meta))
        if callable(obj):
            problem = builder_signature_problem(obj)
            if problem:
                raise RegistryError(f"{self.kind[:-1]} '{name}' from {entry.where} cannot be built from a recipe: "
                                    f"{problem}")
        for key in (name, *entry.aliases):
            taken = self._lookup(key)
            if taken is None:
                continue
            if not override:
                raise RegistryError(
                    f"{self.kind[:-1]} '{key}' from {entry.where} is already registered by {taken.where}; "
                    f"pass override=True to replace it")
            self._remove(taken.name)
        self._entries[name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = name
        plugins.record_registration(self, name)
        return obj

    def _remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry:
            for alias in entry.aliases:
                self._aliases.pop(alias, None)

    def unregister(self, name: str) -> None:
        """Remove a name (tests and plugin rollback use this)."""
        self._remove(self._aliases.get(name, name))

    # -- lookup -------------------------------------------------------------------------------------------------
    def _lookup(self, name: str) -> Entry | None:
        canonical = self._aliases.get(name, name)
        return self._entries.get(canonical)

    def entry(self, name: str) -> Entry:
        _ensure_plugins()
        found = self._lookup(name)
        if found is None:
            raise UnknownNameError(self.unknown_message(name))
        return found

    def unknown_message(self, name: str) -> str:
        _ensure_plugins()
        known = sorted(set(self._entries) | set(self._aliases))
        hint = did_you_mean(name, known)
        if not hint:
            hint = (" Known: " + ", ".join(sorted(self._entries)) + ".") if self._entries else \
                f" No {self.kind} are registered: is the plugin that provides it installed? (`deepcourse plugins`)"
        return f"unknown {self.kind[:-1]} '{name}'.{hint}"

    def get(self, name: str) -> Any:
        return self.entry(name).obj

    def build(self, name: str, /, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered (canonical) names matching an fnmatch pattern, sorted."""
        _ensure_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        _ensure_plugins()
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def builder_signature_problem(fn: Any) -> str:
    """Why `fn` cannot be called with a recipe table's keyword arguments, or '' when it can.

    Checked at registration, so a broken builder fails its plugin's load (reported by name) instead of
    surfacing as a traceback in the middle of someone's run.
    """
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        return f"its signature cannot be read ({exc})"
    for p in sig.parameters.values():
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            return f"parameter '{p.name}' is positional-only; builders are called with keyword arguments"
        if p.kind is p.VAR_POSITIONAL:
            return f"*{p.name} cannot be filled from a recipe table; use keyword parameters"
    return ""


def _origin_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    top = module.split(".")[0]
    return "deepcourse" if top == "deepcourse" else module


def _ensure_plugins() -> None:
    from . import plugins

    plugins.load_plugins()


MODELS = Registry("models")
DATASETS = Registry("datasets")
TASKS = Registry("tasks")
OPTIMIZERS = Registry("optimizers")
SCHEDULERS = Registry("schedulers")
TRANSFORMS = Registry("transforms")
METRICS = Registry("metrics")
CALLBACKS = Registry("callbacks")

ALL: dict[str, Registry] = {r.kind: r for r in
                            (MODELS, DATASETS, TASKS, OPTIMIZERS, SCHEDULERS, TRANSFORMS, METRICS, CALLBACKS)}
