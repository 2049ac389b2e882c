"""The recipe's JSON Schema, for editors: Taplo and VS Code's Even Better TOML complete keys and show each key's
description from it while a recipe is written (`deepcourse schema`, and `recipe.schema.json` at the checkout's root).

It is pydantic's own schema of `Recipe`, the model every recipe is validated against, so it cannot disagree with the
checks `deepcourse check` runs. The open tables (`[model]`, `[data]`, `[optimizer]`, ...) take their builder's
keyword arguments, which depend on the component named and the plugins installed: the schema lets any key through
there, and `examples` lists the components registered at the time it was written when `components` is given.
No key is marked required: a file that `extends` another may leave out any of them (`deepcourse check` says what a
whole recipe lacks).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from deepcourse.recipe.schema import Recipe

DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: the open sections whose `name` picks a registered component: schema definition -> registry kind
NAMED_SECTIONS = {"ModelSection": "models", "DataSection": "datasets", "OptimizerSection": "optimizers",
                  "SchedulerSection": "schedulers", "TaskSection": "tasks"}


def recipe_json_schema(components: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The JSON Schema of a recipe file; `components` (registry kind -> names) adds the names as examples of each
    section's `name`."""
    schema: dict[str, Any] = {"$schema": DIALECT, **Recipe.model_json_schema(mode="validation")}
    _drop_required(schema)
    schema["title"] = "deepcourse recipe"
    schema["description"] = ("A deepcourse training recipe (TOML). Keys and their meaning: docs/recipe-reference.md; "
                             "`deepcourse check RECIPE` validates a file fully, plugins' keys included.")
    for definition, kind in NAMED_SECTIONS.items():
        name = schema.get("$defs", {}).get(definition, {}).get("properties", {}).get("name")
        if name is not None and components and components.get(kind):
            name["examples"] = sorted(components[kind])
    return schema


def _drop_required(node: Any) -> None:
    """Remove every `required` list, in place (see the module's docstring)."""
    if isinstance(node, dict):
        if isinstance(node.get("required"), list):
            del node["required"]
        for value in node.values():
            _drop_required(value)
    elif isinstance(node, list):
        for value in node:
            _drop_required(value)


def render(schema: Mapping[str, Any]) -> str:
    """The text written to recipe.schema.json and printed by `deepcourse schema` (stable: sorted keys, a newline)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
