"""Plugin discovery through the `deepcourse.plugins` entry-point group, as pytest and flake8 do it.

Each entry point names a module (importing it registers components) or a zero-argument callable. A plugin that
fails is reported by name and skipped: whatever it registered before failing is rolled back, and everything else
keeps working. Set DEEPCOURSE_PLUGIN_ERRORS=raise to get the original exception instead (useful when writing one).
"""
from __future__ import annotations

import contextvars
import importlib
import importlib.metadata as md
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UserError, did_you_mean

if TYPE_CHECKING:
    from .registry import Registry

GROUP = "deepcourse.plugins"
CORE_MODULES = ("deepcourse.optim", "deepcourse.metrics", "deepcourse.callbacks")


@dataclass
class PluginInfo:
    name: str
    dist: str
    version: str
    target: str
    status: str = "pending"  # ok | error | incompatible
    error: str = ""
    details: str = ""  # traceback, shown by `deepcourse plugins -v`
    components: list[tuple[str, str]] = field(default_factory=list)


_plugins: dict[str, PluginInfo] = {}
_state = {"loaded": False, "loading": False}
_origin: contextvars.ContextVar[PluginInfo | None] = contextvars.ContextVar("deepcourse_plugin", default=None)


def current_origin(module: str | None = None) -> str | None:
    """The plugin a registration comes from: the one being loaded right now, else the installed plugin whose
    entry point lives in the registering module's top-level package (a plugin imported before discovery)."""
    info = _origin.get()
    if info is not None:
        return info.name
    if module:
        return _plugin_packages().get(module.split(".")[0])
    return None


_packages: dict[str, str] = {}


def _plugin_packages() -> dict[str, str]:
    """top-level package -> plugin name, from the installed entry points (read once)."""
    if not _packages:
        for ep in md.entry_points(group=GROUP):
            _packages.setdefault(ep.value.split(":")[0].split(".")[0], ep.name)
        _packages.setdefault("", "")  # mark as read even when no plugin is installed
    return _packages


def record_registration(registry: Registry, name: str) -> None:
    info = _origin.get()
    if info is not None:
        info.components.append((registry.kind, name))


def plugins() -> list[PluginInfo]:
    load_plugins()
    return sorted(_plugins.values(), key=lambda p: p.name)


def load_plugins() -> None:
    """Import the core components and every installed plugin, once. Cheap after the first call."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        for module in CORE_MODULES:
            importlib.import_module(module)
        _load_entry_points()
    finally:
        _state["loading"] = False
        _state["loaded"] = True


def refresh() -> None:
    """Load plugins installed since the last scan (tests create throwaway distributions on sys.path)."""
    importlib.invalidate_caches()
    _packages.clear()
    _state["loaded"] = False
    load_plugins()


def _load_entry_points() -> None:
    seen: set[str] = set()
    # sorted, so which plugin wins a name conflict never depends on the file system's order
    for ep in sorted(md.entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        key = f"{dist_name}:{ep.name}"
        if key in seen or ep.name in _plugins:
            continue
        seen.add(key)
        info = PluginInfo(ep.name, dist_name, version, ep.value)
        _plugins[ep.name] = info
        problem = _incompatibility(dist)
        if problem:
            info.status, info.error = "incompatible", problem
            _warn(info)
            continue
        _load_one(info, ep)


def _load_one(info: PluginInfo, ep: md.EntryPoint) -> None:
    token = _origin.set(info)
    try:
        target = ep.load()
        if callable(target) and not inspect.ismodule(target):
            target()
        info.status = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure in third-party code is reported, not fatal
        _rollback(info)
        info.status = "error"
        info.error = f"{type(exc).__name__}: {exc}"
        info.details = traceback.format_exc()
        if os.environ.get("DEEPCOURSE_PLUGIN_ERRORS", "").lower() == "raise":
            raise
        _warn(info)
    finally:
        _origin.reset(token)


def _rollback(info: PluginInfo) -> None:
    from .registry import ALL

    for kind, name in info.components:
        ALL[kind].unregister(name)
    info.components.clear()


def _incompatibility(dist: md.Distribution | None) -> str:
    """The plugin's own `deepcourse` requirement (Requires-Dist) decides which core versions it supports."""
    if dist is None:
        return ""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip and setuptools
        return ""
    from . import __version__

    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except Exception:  # noqa: BLE001
            continue
        if req.name.lower().replace("_", "-") != "deepcourse" or (req.marker and "extra" in str(req.marker)):
            continue
        if req.specifier and not req.specifier.contains(__version__, prereleases=True):
            return (f"needs deepcourse{req.specifier}, but deepcourse {__version__} is installed; "
                    f"upgrade one of them")
    return ""


def _warn(info: PluginInfo) -> None:
    print(f"deepcourse: warning: plugin '{info.name}' ({info.dist} {info.version}) was skipped: {info.error} "
          f"(see `deepcourse plugins`)", file=sys.stderr)


def require(names: list[str], key: str = "requires_plugins") -> None:
    """Fail with one clear message when a recipe needs plugins that are missing or broken."""
    if not names:
        return
    load_plugins()
    by_name = {p.name: p for p in _plugins.values()}
    by_dist = {p.dist.lower(): p for p in _plugins.values()}
    problems = []
    for i, wanted in enumerate(names):
        info = by_name.get(wanted) or by_dist.get(wanted.lower()) or by_dist.get(f"deepcourse-{wanted}".lower())
        if info is None:
            hint = did_you_mean(wanted, list(by_name)) or (
                " Installed: " + ", ".join(sorted(by_name)) + "." if by_name else " No plugins are installed.")
            problems.append(f"{key}[{i}]: plugin '{wanted}' is not installed (pip install deepcourse-{wanted}, or "
                            f"pip install -e plugins/{wanted} from a deepcourse checkout).{hint}")
        elif info.status != "ok":
            problems.append(f"{key}[{i}]: plugin '{wanted}' is installed but {info.status}: {info.error}")
    if problems:
        raise UserError("the recipe needs plugins that are not available", problems)
