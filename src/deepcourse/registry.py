"""Named components (models, datasets, tasks, ...) that recipes refer to by string.

There is one `Registry` per kind. A registry stores and looks up, nothing more: plugins fill it when they are
imported, and discovering the installed plugins is an explicit step (`deepcourse.discovery.load_plugins`) taken once
by the command line and the Python API, never a side effect of a lookup.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib.metadata as md
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from deepcourse.errors import UserError, did_you_mean

T = TypeVar("T")

__all__ = [
    "Entry", "Registry", "RegistryError", "UnknownNameError",
    "MODELS", "DATASETS", "TASKS", "OPTIMIZERS", "SCHEDULERS", "TRANSFORMS", "METRICS", "CALLBACKS", "PIECES",
    "ALL",
]


class RegistryError(Exception):
    """A registration conflict: a programming error in a plugin, reported against that plugin."""


class UnknownNameError(UserError, KeyError):
    """A recipe or command named a component that nobody registered."""


@dataclass
class Entry:
    name: str
    obj: Any
    module: str  # where the builder is defined: what the component is credited to
    aliases: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The plugin the component comes from ("vision"), "deepcourse" for the core, else its module."""
        return credit(self.module)

    @property
    def where(self) -> str:
        """'plugin toy (toy_plugin)', 'deepcourse (deepcourse.optim)' or 'module x'."""
        origin = self.origin
        if origin == self.module:
            return f"module {self.module}"
        if origin == CORE:
            return f"deepcourse ({self.module})"
        return f"plugin {origin} ({self.module})"

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
        """Register `obj` under `name`; without `obj`, return a decorator. Returns `obj` unchanged.

        `meta` is free-form data kept with the entry; the core reads `task=` on datasets (the task, or tuple of
        tasks, a dataset serves) to refuse a recipe that binds a dataset to a task it cannot feed."""
        if obj is None:
            def decorator(target: T) -> T:
                self.register(name, target, aliases=aliases, override=override, **meta)
                return target
            return decorator
        name = name or getattr(obj, "__name__", None)
        if not name:
            raise RegistryError(f"{self.kind}: cannot register {obj!r} without a name")
        entry = Entry(name, obj, getattr(obj, "__module__", None) or "?", tuple(aliases), dict(meta))
        if callable(obj):
            problem = builder_signature_problem(obj)
            if problem:
                raise RegistryError(f"{self.kind[:-1]} '{name}' from {entry.where} cannot be built from a recipe: "
                                    f"{problem}")
        for key in (name, *entry.aliases):
            taken = self._lookup(key)
            if taken is None or _same_definition(taken, entry):
                continue  # a module executed again (reloaded, or imported anew after a failed import) replaces itself
            if not override:
                raise RegistryError(
                    f"{self.kind[:-1]} '{key}' from {entry.where} is already registered by {taken.where}; "
                    f"pass override=True to replace it")
        for key in (name, *entry.aliases):
            taken = self._lookup(key)
            if taken is not None:
                self._remove(taken.name)
        self._entries[name] = entry
        for alias in entry.aliases:
            self._aliases[alias] = name
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
        return self._entries.get(self._aliases.get(name, name))

    def entry(self, name: str) -> Entry:
        found = self._lookup(name)
        if found is None:
            raise UnknownNameError(self.unknown_message(name))
        return found

    def unknown_message(self, name: str) -> str:
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
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self, pattern: str = "*") -> list[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _same_definition(a: Entry, b: Entry) -> bool:
    """The same builder defined anew by the same module (same name and source line), not a second one."""
    return _definition(a.obj) == _definition(b.obj) and a.module == b.module and _definition(b.obj)[0] is not None


def _definition(obj: Any) -> tuple[str | None, int | None]:
    code = getattr(obj, "__code__", None)
    return getattr(obj, "__qualname__", None), getattr(code, "co_firstlineno", None)


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


MODELS = Registry("models")
DATASETS = Registry("datasets")
TASKS = Registry("tasks")
OPTIMIZERS = Registry("optimizers")
SCHEDULERS = Registry("schedulers")
TRANSFORMS = Registry("transforms")
METRICS = Registry("metrics")
CALLBACKS = Registry("callbacks")
#: hand-written lab pieces (layers, losses, update rules; see `deepcourse.lab`)
PIECES = Registry("pieces")

ALL: dict[str, Registry] = {r.kind: r for r in
                            (MODELS, DATASETS, TASKS, OPTIMIZERS, SCHEDULERS, TRANSFORMS, METRICS, CALLBACKS, PIECES)}


# -- which plugin a component belongs to ----------------------------------------------------------------------------
# Which plugin a registered component belongs to: the distribution whose module defines it.
#
# A component is credited by where its code lives, never by which plugin happened to be loading when it was
# registered. So a plugin that imports another one (a dataset plugin building on deepcourse-vision) never takes
# over the other's components, and when it fails, rolling it back never removes them.
#: the entry-point group plugins are found through
GROUP = "deepcourse.plugins"
CORE = "deepcourse"


def credit(module: str) -> str:
    """'deepcourse' for the core, the plugin's (entry-point) name for a module of a plugin's distribution, else the
    module itself (a script, a test, a package that is no plugin)."""
    top = module.split(".")[0]
    if top == CORE:
        return CORE
    return plugin_packages().get(top, module)


@functools.cache
def plugin_packages() -> dict[str, str]:
    """Top-level package -> plugin name, for every installed plugin distribution (read once; `forget()` re-reads).

    The packages a distribution installs come from its metadata (top_level.txt, else its RECORD); the package its
    entry point names counts too, for distributions whose metadata lists no files."""
    found: dict[str, str] = {}
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        for package in _packages_of(ep.dist):
            found.setdefault(package, ep.name)
        found.setdefault(ep.value.split(":")[0].split(".")[0], ep.name)
    return found


def _packages_of(dist: md.Distribution | None) -> list[str]:
    if dist is None:
        return []
    listed = dist.read_text("top_level.txt")
    if listed:
        return [line.strip() for line in listed.splitlines() if line.strip()]
    tops = []
    for file in dist.files or ():
        parts = file.parts
        if len(parts) > 1 and parts[-1].endswith(".py") and not parts[0].endswith((".dist-info", ".egg-info")):
            tops.append(parts[0])
    return sorted(set(tops))


def forget() -> None:
    """Re-read the installed plugins at the next `credit` (after installing one into a running process)."""
    plugin_packages.cache_clear()
