"""Plugin discovery through the `deepcourse.plugins` entry-point group, as pytest and flake8 do it.

Each entry point names a module (importing it registers components) or a zero-argument callable. Discovery is
explicit and runs once (`load_plugins`); the command line and the Python API call it before they read a registry.
A plugin that fails is reported by name and skipped: whatever its own modules registered is rolled back, and
everything else keeps working. Set DEEPCOURSE_PLUGIN_ERRORS=raise to get the original exception instead (useful
when writing one).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import logging
import os
import traceback
from dataclasses import dataclass

from deepcourse import registry
from deepcourse._version import __version__
from deepcourse.errors import UserError, did_you_mean
from deepcourse.registry import ALL

GROUP = registry.GROUP
log = logging.getLogger(__name__)


@dataclass
class PluginInfo:
    name: str
    dist: str
    version: str
    target: str
    status: str = "pending"  # ok | error | incompatible
    error: str = ""
    details: str = ""  # traceback, shown by `deepcourse plugins -v`
    heavy: tuple[str, ...] = ()  # the plugin module's HEAVY_MODULES: imported by `check_heavy_modules`

    @property
    def components(self) -> list[tuple[str, str]]:
        """(registry kind, name) of every component credited to this plugin (see `deepcourse.registry`)."""
        return components_of(self.name)


_plugins: dict[str, PluginInfo] = {}
_state = {"loaded": False, "loading": False}


def components_of(origin: str) -> list[tuple[str, str]]:
    return [(kind, e.name) for kind, table in ALL.items() for e in table.entries() if e.origin == origin]


def loaded() -> bool:
    """Whether discovery has run in this process (the registries hold what is installed)."""
    return _state["loaded"]


def plugins() -> list[PluginInfo]:
    load_plugins()
    return sorted(_plugins.values(), key=lambda p: p.name)


def load_plugins() -> None:
    """Register the core components and every installed plugin's, once. Cheap after the first call."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        _load_entry_points()
    finally:
        _state["loading"] = False
        _state["loaded"] = True


def refresh() -> None:
    """Load plugins installed since the last scan (tests create throwaway distributions on sys.path)."""
    importlib.invalidate_caches()
    registry.forget()
    _state["loaded"] = False
    load_plugins()


def _load_entry_points() -> None:
    seen: set[str] = set()
    # sorted, so which plugin wins a name conflict never depends on the file system's order
    found = sorted(md.entry_points(group=GROUP), key=lambda e: (e.name, e.value))
    core = [ep for ep in found if ep.dist is not None and ep.dist.metadata["Name"] == registry.CORE]
    if not core:  # an installation from before the entry point existed, or a source tree on sys.path
        log.warning("deepcourse's own '%s' entry point is missing, so its optimizers, metrics and callbacks are not "
                    "registered: reinstall it (pip install -e . in a checkout)", GROUP)
    for ep in core[:1]:  # the core's own components: not a plugin, and a failure here is a broken installation
        ep.load()
    for ep in found:
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "?"
        if dist_name == registry.CORE:
            continue
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
    try:
        target = ep.load()
        if callable(target) and not inspect.ismodule(target):
            target()
        module = target if inspect.ismodule(target) else inspect.getmodule(target)
        info.heavy = tuple(getattr(module, "HEAVY_MODULES", ()))
        info.status = "ok"
    except Exception as exc:  # any failure in third-party code is reported, not fatal
        _rollback(info)
        info.status = "error"
        info.error = f"{type(exc).__name__}: {exc}"
        info.details = traceback.format_exc()
        if os.environ.get("DEEPCOURSE_PLUGIN_ERRORS", "").lower() == "raise":
            raise
        _warn(info)


def check_heavy_modules() -> None:
    """Import the heavy dependencies each loaded plugin declares (`HEAVY_MODULES = ("torchvision", ...)` in the module
    its entry point names), which plugins import lazily so that every command starts fast: `deepcourse plugins`
    calls this before it says "ok", so a broken torchvision reports the vision plugin broken, by name."""
    for info in plugins():
        if info.status != "ok":
            continue
        for module in info.heavy:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - a broken third-party installation fails in any way
                _rollback(info)
                info.status = "error"
                info.error = f"needs the module '{module}', which fails to import: {type(exc).__name__}: {exc}"
                info.details = traceback.format_exc()
                break


def _rollback(info: PluginInfo) -> None:
    """Unregister what the failed plugin's own modules registered; what it imported from others stays theirs."""
    for kind, name in components_of(info.name):
        ALL[kind].unregister(name)


def _incompatibility(dist: md.Distribution | None) -> str:
    """The plugin's own `deepcourse` requirement (Requires-Dist) decides which core versions it supports."""
    if dist is None:
        return ""
    from packaging.requirements import InvalidRequirement, Requirement

    for line in dist.requires or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower().replace("_", "-") != "deepcourse" or (req.marker and "extra" in str(req.marker)):
            continue
        if req.specifier and not req.specifier.contains(__version__, prereleases=True):
            return (f"needs deepcourse{req.specifier}, but deepcourse {__version__} is installed; "
                    f"upgrade one of them")
    return ""


def _warn(info: PluginInfo) -> None:
    log.warning("plugin '%s' (%s %s) was skipped: %s (see `deepcourse plugins`)", info.name, info.dist, info.version,
                info.error)


def require(names: list[str], key: str = "requires_plugins") -> None:
    """Fail with one clear message when a recipe needs plugins that are missing or broken (after discovery)."""
    if not names:
        return
    by_name = {p.name: p for p in _plugins.values()}
    by_dist = {p.dist.lower(): p for p in _plugins.values()}
    problems = []
    for i, wanted in enumerate(names):
        info = by_name.get(wanted) or by_dist.get(wanted.lower()) or by_dist.get(f"deepcourse-{wanted}".lower())
        if info is None:
            hint = did_you_mean(wanted, list(by_name)) or (
                " Installed: " + ", ".join(sorted(by_name)) + "." if by_name else " No plugins are installed.")
            problems.append(f"{key}[{i}]: plugin '{wanted}' is not installed (pip install -e plugins/{wanted} from a "
                            f"deepcourse checkout; no deepcourse package is published on PyPI yet).{hint}")
        elif info.status != "ok":
            problems.append(f"{key}[{i}]: plugin '{wanted}' is installed but {info.status}: {info.error}")
    if problems:
        raise UserError("the recipe needs plugins that are not available", problems)
