"""`deepcourse new-plugin`: generate a working plugin package to start from.

The package is what a third party would publish: a pyproject with the `deepcourse.plugins` entry point, a
registered component, a recipe that uses it and a pytest test; `pip install -e` it and both pass as generated.
The `lab` kind is the exception by design: its layers, loss and update rules are stubs for a student to write, and
its tests (the gradient checker on every piece) fail, reporting 'not written', until they are.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import re
from pathlib import Path
from string import Template

from deepcourse import registry
from deepcourse.errors import UserError

KINDS = ("model", "dataset", "task", "lab")
#: the package a new plugin starts from; the Python sources are `*.py.tmpl` (string.Template text, not modules)
TEMPLATES = Path(__file__).parent / "templates"
#: deepcourse's own plugins: a generated package of that name would replace the real one when installed
FIRST_PARTY = ("vision", "sequence")


def normalise(name: str) -> str:
    """'My-CNN' -> 'my_cnn': the entry-point name and the package suffix (deepcourse_my_cnn), with the one spelling
    change Python packaging makes anyway ('-' and '_' are the same, case does not count). Anything else is refused
    with its reason rather than silently dropped or replaced."""
    bad = sorted(set(re.sub(r"[0-9A-Za-z_-]", "", name)))
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        suggestion = re.sub(r"[^0-9A-Za-z_-]+", "-", name).strip("-_") or "mycnn"
        raise UserError(f"plugin name '{name}': {shown} not allowed; use letters, digits, '-' and '_' (e.g. "
                        f"'{suggestion}')")
    if not name or not name[0].isalpha():
        raise UserError(f"plugin name '{name}': use a name starting with a letter (e.g. 'my{name.strip('-_')}')")
    ident = name.replace("-", "_").lower()
    taken = _taken(ident)
    if taken:
        raise UserError(f"plugin name '{name}': {taken}; installing the generated package would replace or shadow "
                        f"it. Choose another name (e.g. 'my_{ident}')")
    return ident


def _taken(ident: str) -> str:
    """Why `ident` belongs to another plugin already ('' when it is free)."""
    dist = f"deepcourse-{ident.replace('_', '-')}"
    if ident in FIRST_PARTY:
        return f"'{dist}' is deepcourse's own {ident} plugin"
    installed = {ep.name: ep for ep in md.entry_points(group=registry.GROUP)}
    if ident in installed:
        owner = installed[ident].dist
        return f"a plugin named '{ident}' is installed (from {owner.metadata['Name'] if owner else 'a package'})"
    try:
        md.distribution(dist)
        return f"the distribution '{dist}' is installed"
    except md.PackageNotFoundError:
        pass
    if importlib.util.find_spec(f"deepcourse_{ident}") is not None:
        return f"a package 'deepcourse_{ident}' is importable already"
    return ""


def new_plugin(name: str, directory: Path | None = None, kind: str = "model") -> Path:
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    ident = normalise(name)
    root = directory or Path(f"deepcourse-{ident.replace('_', '-')}")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"--dir {root}: already exists and is not empty; choose another folder")
    values = {"name": ident, "dist": f"deepcourse-{ident.replace('_', '-')}", "package": f"deepcourse_{ident}",
              "title": ident.replace("_", " ")}
    for target, template in _files(kind, ident, values["package"]).items():
        text = Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def _files(kind: str, ident: str, package: str) -> dict[str, str]:
    """Generated path -> template. Every kind has a pyproject, a README, a recipe and a test; the package's modules
    are the kind's other `*.py.tmpl` files (`__init__`, and for a lab its `layers`, `losses` and `optim` stubs)."""
    files = {"pyproject.toml": f"{kind}/pyproject.toml", "README.md": f"{kind}/README.md",
             f"recipes/{ident}.toml": f"{kind}/recipe.toml", f"tests/test_{ident}.py": f"{kind}/test_plugin.py.tmpl"}
    for source in sorted((TEMPLATES / kind).glob("*.py.tmpl")):
        module = source.name.removesuffix(".py.tmpl")
        if module != "test_plugin":
            files[f"src/{package}/{module}.py"] = f"{kind}/{source.name}"
    return files
