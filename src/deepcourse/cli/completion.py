"""Shell completion of recipe arguments: the names of the shipped recipes (`deepcourse run quick<TAB>`) and the
.toml files and folders under the path typed so far.

Click completes commands and options by itself (`eval "$(_DEEPCOURSE_COMPLETE=bash_source deepcourse)"`, see
docs/cli.md); a RECIPE argument is a name or a path, which no click type completes both of, hence this function.
It returns plain items only, so every shell shows the names and the files together.
"""
from __future__ import annotations

from pathlib import Path

import click
from click.shell_completion import CompletionItem


def complete_recipe(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Shipped recipe names starting with `incomplete`, then .toml files and folders matching it as a path."""
    from deepcourse.recipe.shipped import shipped

    names = [CompletionItem(name, help="shipped recipe") for name in shipped() if name.startswith(incomplete)]
    return names + [CompletionItem(path) for path in _toml_paths(incomplete)]


def _toml_paths(incomplete: str) -> list[str]:
    """'.toml' files and folders whose path starts with `incomplete` (folders end with '/', to go on typing)."""
    folder, _, prefix = incomplete.rpartition("/")
    base = Path(folder or ("/" if incomplete.startswith("/") else ".")).expanduser()
    if not base.is_dir():
        return []
    found = []
    try:
        entries = sorted(base.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.startswith(prefix) or (entry.name.startswith(".") and not prefix.startswith(".")):
            continue
        shown = f"{folder}/{entry.name}" if "/" in incomplete else entry.name
        if entry.is_dir():
            found.append(shown + "/")
        elif entry.suffix == ".toml":
            found.append(shown)
    return found
