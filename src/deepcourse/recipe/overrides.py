"""The `--set key.path=VALUE` syntax (one recipe value on the command line, a sweep's grid point, a search trial),
and recipes as flat key paths: `flatten`, `differing_keys`, `value_at`.

VALUE is a TOML literal (`0.01`, `[1, 2]`, `{name = "sgd"}`); a bare word is taken as a string (`resnet18`).
"""
from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from deepcourse.errors import RecipeError


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=VALUE' -> (['a', 'b'], value). VALUE is a TOML literal; a bare word is taken as a string."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set optimizer.lr=0.01")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    parts = key.split(".")
    if not key or any(not p or not p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise RecipeError(f"--set {text}: '{key}' is not a dotted key path such as train.epochs")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw and not any(c in raw for c in "[]{}\"'=,#") and not raw[0].isdigit() and raw[0] not in "+-.":
            value = raw  # --set model.name=resnet18
        else:
            raise RecipeError(f"--set {text}: '{raw}' is not a valid TOML value (strings may be quoted, "
                              f"lists written [1, 2], tables {{a = 1}})") from None
    return parts, value


def toml_literal(value: Any) -> str:
    """A TOML value on one line (tables inline), as `--set` reads it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_literal(v)}" for k, v in value.items()) + "}"
    raise RecipeError(f"cannot write {value!r} as a TOML value")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"--set {text}: '{'.'.join(parts[:i + 1])}' is a value, not a table")
            node = child
        node[parts[-1]] = value
    return data


# -- comparing recipes ----------------------------------------------------------------------------------------------
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(recipes: Sequence[Mapping[str, Any]], ignore: Sequence[str] = ()) -> list[str]:
    """Key paths whose values differ between resolved recipes (as TOML values: a tuple equals the list it is
    written as), leaving out keys under the `ignore` prefixes."""
    flat = [flatten(r) for r in recipes]
    keys = sorted(set().union(*flat)) if flat else []
    return [k for k in keys if not k.startswith(tuple(ignore)) and len({json.dumps(f.get(k), sort_keys=True)
                                                                        for f in flat}) > 1]


def value_at(recipe: Mapping[str, Any], dotted: str) -> Any:
    node: Any = recipe
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node
