"""`deepcourse new-plugin`: generate a working plugin package to start from.

The package is what a third party would publish: a pyproject with the `deepcourse.plugins` entry point, a
registered component, a recipe that uses it and a pytest test; `pip install -e` it and both pass as generated.
"""
from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from .errors import UserError

KINDS = ("model", "dataset", "task")
TEMPLATES = Path(__file__).parent / "templates"


def normalise(name: str) -> str:
    """'My Plugin' -> 'my_plugin' (a Python identifier that is also a sensible entry-point name)."""
    ident = re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident):
        raise UserError(f"plugin name '{name}': use letters, digits and '-' or '_', starting with a letter "
                        f"(e.g. 'mycnn')")
    return ident


def new_plugin(name: str, directory: Path | None = None, kind: str = "model") -> Path:
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    ident = normalise(name)
    root = directory or Path(f"deepcourse-{ident.replace('_', '-')}")
    if root.exists() and any(root.iterdir()):
        raise UserError(f"--dir {root}: already exists and is not empty; choose another folder")
    values = {"name": ident, "dist": f"deepcourse-{ident.replace('_', '-')}", "package": f"deepcourse_{ident}",
              "title": ident.replace("_", " ")}
    files = {
        "pyproject.toml": f"{kind}/pyproject.toml",
        "README.md": f"{kind}/README.md",
        f"src/{values['package']}/__init__.py": f"{kind}/__init__.py",
        f"recipes/{ident}.toml": f"{kind}/recipe.toml",
        f"tests/test_{ident}.py": f"{kind}/test_plugin.py",
    }
    for target, template in files.items():
        text = Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
