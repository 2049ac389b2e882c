"""Which plugin a registered component belongs to: the distribution whose module defines it.

A component is credited by where its code lives, never by which plugin happened to be loading when it was
registered. So a plugin that imports another one (a dataset plugin building on deepcourse-vision) never takes
over the other's components, and when it fails, rolling it back never removes them.
"""
from __future__ import annotations

import functools
import importlib.metadata as md

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
