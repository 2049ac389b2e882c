"""The recipes that ship with deepcourse: listed by `deepcourse recipes`, run by name (`deepcourse run quickstart`).

They are the checkout's `recipes/` folder, installed inside the package (`deepcourse/recipes/`) by the wheel, so a
plain `pip install deepcourse` runs them without a checkout; an editable install reads the checkout's folder.
"""
from __future__ import annotations

import os
import tomllib
import warnings
from pathlib import Path

from deepcourse.errors import RecipeWarning, did_you_mean


def recipes_dir() -> Path | None:
    """Where the shipped recipes are: inside the installed package, else (editable install) the checkout's."""
    package = Path(__file__).resolve().parents[1]  # deepcourse/, above this wing
    for folder in (package / "recipes", package.parents[1] / "recipes"):
        if folder.is_dir():
            return folder
    return None


def shipped() -> dict[str, Path]:
    """Name -> file of every shipped recipe; the name is its path in the folder without `.toml`
    ('quickstart', 'ablations/lenet_dropout')."""
    folder = recipes_dir()
    if folder is None:
        return {}
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in sorted(folder.rglob("*.toml"))}


def resolve(recipe: str | os.PathLike[str]) -> Path:
    """The file `recipe` names: an existing path as it is, else the shipped recipe of that name (also written as
    `recipes/NAME.toml` from another folder); otherwise the path unchanged, for the caller's not-found error. A local
    file that shadows a different shipped recipe of the same name is used, with a warning naming both."""
    path = Path(recipe)
    name = path.as_posix().removesuffix(".toml").removeprefix("recipes/")
    found = None if path.is_absolute() else shipped().get(name)
    if path.exists():
        if found is not None and path.is_file():
            _warn_shadowing(path, found, name)
        return path
    return found or path


#: local files already warned about in this process (a sweep or a study resolves its recipe once per trial)
_WARNED: set[Path] = set()


def _warn_shadowing(local: Path, shipped_file: Path, name: str) -> None:
    """Warn once per file that `local` is used in place of the shipped recipe `name`, unless they are one file or
    hold the same text (then nothing depends on which is read)."""
    real = local.resolve()
    if real in _WARNED or real == shipped_file.resolve():
        return
    try:
        if local.read_bytes() == shipped_file.read_bytes():
            return
    except OSError:
        return  # an unreadable local file is reported when it is read
    _WARNED.add(real)
    warnings.warn(f"{local}: a local file with the name of the shipped recipe '{name}' ({shipped_file}), and "
                  f"different from it; using the local file {real}. Rename it to run both, or give the shipped one "
                  f"by its path", RecipeWarning, stacklevel=3)


def not_found_hint(recipe: str | Path) -> str:
    """' Shipped recipes: ...' or a did-you-mean among them, for a recipe that is neither a file nor a name."""
    names = list(shipped())
    if not names:
        return ""
    name = Path(recipe).as_posix().removesuffix(".toml").removeprefix("recipes/")
    return did_you_mean(name, names) or " `deepcourse recipes` lists the shipped recipes, which run by name."


def describe(path: Path) -> tuple[list[str], str]:
    """(required plugins, first line of the description) of a recipe file, following `extends` for both."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return [], "(unreadable)"
    plugins, text = data.get("requires_plugins"), data.get("description")
    if (plugins is None or text is None) and isinstance(data.get("extends"), str):
        base_plugins, base_text = describe(path.parent / data["extends"])
        plugins = base_plugins if plugins is None else plugins
        text = base_text if text is None else text
    first = str(text or "").strip().splitlines()
    return list(plugins or []), first[0] if first else ""
