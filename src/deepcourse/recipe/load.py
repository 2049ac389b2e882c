"""Recipes: TOML files that bind a dataset to a model, validated before anything is loaded.

Loading goes: find the file (a path, or the name of a shipped recipe) -> read TOML -> follow `extends` (tables
deep-merge, lists replace) -> apply `--set` overrides -> check the core keys against `deepcourse.recipe.schema` ->
check each plugin table against its builder's signature. Every problem is collected and reported at once with its key
path, so a user fixes a recipe in one pass instead of one error per run.
"""
from __future__ import annotations

import copy
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deepcourse import discovery
from deepcourse.errors import RecipeError, UserError, did_you_mean
from deepcourse.recipe import shipped
from deepcourse.recipe.builders import _join, format_errors, validate_options
from deepcourse.recipe.overrides import apply_overrides, flatten, parse_override, toml_literal
from deepcourse.recipe.schema import (
    BUILDER_SECTIONS,
    CONTEXT_KEYS,
    HOLDOUT,
    SECTION_MODELS,
    EvalSection,
    Recipe,
)
from deepcourse.recipe.searchspace import grid_problems, key_place, parse_space
from deepcourse.registry import ALL, CALLBACKS, DATASETS, TASKS

__all__ = ["load_recipe", "validate_recipe", "read_toml"]


# -- reading -------------------------------------------------------------------------------------------------------
def read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: recipe file not found.{shipped.not_found_hint(path)}") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a recipe file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read recipe: {exc.strerror or exc}") from None
    text = decode_utf8(path, raw)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        place = f"{path}:{where.group(1)}:{where.group(2)}" if where else str(path)
        raise RecipeError(f"{place}: invalid TOML: {message}") from None


def decode_utf8(path: Path, raw: bytes) -> str:
    """A TOML file's text. TOML is UTF-8; the byte-order mark some Windows editors write is accepted, and anything
    else is named by line and column with the fix, not left as a codec's message."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path}: saved as UTF-16 (it starts with a UTF-16 byte-order mark); TOML files are UTF-8: "
                        f"save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{path}:{line}:{column}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}; the file is probably "
                        f"Latin-1 or Windows-1252); TOML files are UTF-8: save it as UTF-8, e.g. iconv -f latin1 -t "
                        f"utf-8") from None


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; anything else (lists included) in `top` replaces `base`."""
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_with_origins(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """The recipe with its `extends` chain merged in, and the file each key path comes from (so a mistake in a base
    recipe is reported against the base, not against the child that extends it)."""
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, resolved))
        raise RecipeError(f"extends: cycle in recipe inheritance: {cycle}")
    data = read_toml(path)  # messages name the file as the user wrote it
    own = {key: path for key in flatten(data)}
    parent = data.get("extends")
    if parent is None:
        return data, own
    if not isinstance(parent, str):
        raise RecipeError(f"{path}: extends: must be a path string (got {parent!r})")
    parent_path = (path.parent / parent)
    if not parent_path.exists():
        raise RecipeError(f"{path}: extends: base recipe '{parent}' not found (looked for {parent_path})")
    base, origins = resolve_with_origins(parent_path, (*_chain, resolved))
    base.pop("name", None)  # a child is its own experiment unless it says otherwise
    origins = {k: f for k, f in origins.items() if k != "name" and not any(k == o or k.startswith(f"{o}.")
                                                                             for o in own)}
    return deep_merge(base, data), {**origins, **own}


def load_recipe(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = (),
                data: Mapping[str, Any] | None = None) -> Recipe:
    """Read, merge, override and validate a recipe; raise RecipeError listing every problem.

    `path` is a recipe file or the name of a shipped recipe ('quickstart'); `data` an already parsed table. The
    recipe is checked against the registries as discovery left them: the faces (the command line,
    `deepcourse.run`, `deepcourse.api.load_recipe`) discover the installed plugins first; loading never does."""
    origins: dict[str, Path] = {}
    if data is None:
        if path is None:
            raise ValueError("load_recipe needs a path or data")
        path = shipped.resolve(path)
        data, origins = resolve_with_origins(path)
    data = apply_overrides(dict(data), overrides)
    overridden = [".".join(parse_override(text)[0]) for text in overrides]
    origins = {k: f for k, f in origins.items() if not any(k == o or k.startswith(f"{o}.") for o in overridden)}
    if path is not None:
        data.setdefault("name", Path(path).stem)
    return validate_recipe(data, source=Path(path) if path else None, origins=origins)


def validate_recipe(data: Mapping[str, Any], source: Path | None = None,
                    origins: Mapping[str, Path] | None = None) -> Recipe:
    """Validate core keys and every plugin table together, so all problems are reported in one go. `origins` (key
    path -> file) names the base recipe a problem comes from, when it is not `source` itself."""
    prefix = f"{source}: " if source else ""
    if not discovery.loaded():
        raise RuntimeError("a recipe is validated against the registries, which are filled by discovery: call "
                           "deepcourse.api.load_plugins() first (the command line and deepcourse.run do)")
    required = data.get("requires_plugins", [])
    if isinstance(required, list) and all(isinstance(r, str) for r in required):
        discovery.require(required)
    unusable = unusable_values(data)
    problems: list[str] = []
    recipe = None
    try:
        recipe = Recipe.model_validate(dict(data))
    except ValidationError as exc:
        problems += recipe_problems(exc, data)
    problems += check_builders(data) + repeated_trackers(data)
    reported = tuple(f"{line.split(':', 1)[0]}:" for line in unusable)
    problems = unusable + [p for p in problems if not p.startswith(reported)]  # one message per key
    problems = [_in_file(p, origins or {}, source) for p in problems]
    if not problems:  # a search space is checked against a recipe that is valid itself
        problems += check_search(data)
    if problems:
        raise RecipeError(f"{prefix}invalid recipe", problems)
    assert recipe is not None
    recipe.source = source
    return recipe


def _in_file(problem: str, origins: Mapping[str, Path], source: Path | None) -> str:
    """'base.toml: train.epocs: ...' when the key comes from a base recipe rather than the file given."""
    key = problem.split(":", 1)[0]
    while key:
        origin = origins.get(key)
        if origin is not None:
            return problem if source is not None and origin == source else f"{origin}: {problem}"
        shorter = re.sub(r"(\[[^\]]*\]|\.[^.\[]*)$", "", key) if re.search(r"[.\[]", key) else ""
        key = shorter if shorter != key else ""  # (a union's member, such as literal['end'], ends the walk)
    return problem


INT64 = (-2**63, 2**63 - 1)


def unusable_values(value: Any, path: str = "") -> list[str]:
    """Values TOML can hold but nothing downstream can use, anywhere in a recipe (plugin tables included, so no
    builder has to remember them): whole numbers beyond 64 bits, on which torch, NumPy and the data loaders overflow
    or loop for ever, and inf/nan, which pass `lr > 0` and then train to NaN."""
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in unusable_values(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in unusable_values(v, f"{path}[{i}]")]
    if isinstance(value, bool):
        return []
    if isinstance(value, int) and not INT64[0] <= value <= INT64[1]:
        bound = f"at most {INT64[1]}" if value > 0 else f"at least {INT64[0]}"
        return [f"{path}: {value} does not fit in 64 bits (whole numbers in a recipe are {bound})"]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: input should be a finite number (got {value})"]
    return []


def check_builders(data: Mapping[str, Any]) -> list[str]:
    """Check every plugin-owned table against its registered builder, before any data is loaded."""
    problems: list[str] = []
    for section, kind in BUILDER_SECTIONS.items():
        table = data.get(section, {} if section in ("optimizer", "scheduler") else None)
        if not isinstance(table, Mapping):
            continue
        default_name = SECTION_MODELS[section].model_fields["name"].default
        name = table.get("name", default_name)
        if not isinstance(name, str):
            continue  # reported by the core validation
        registry = ALL[kind]
        if name not in registry:
            problems.append(f"{section}.name: {registry.unknown_message(name)}")
            continue
        core_keys = set(SECTION_MODELS[section].model_fields)
        options = {k: v for k, v in table.items() if k not in core_keys}
        _, found = validate_options(registry.get(name), options, loc=section, exclude=CONTEXT_KEYS.get(section, ()))
        problems += found
    task = data.get("task")
    task_name = task.get("name") if isinstance(task, Mapping) else None
    problems += _dataset_task_problems(data, task_name)
    eval_split = data.get("eval", {}).get("split") if isinstance(data.get("eval"), Mapping) else None
    if eval_split == HOLDOUT:
        problems.append(f"eval.split: '{HOLDOUT}' is never selected on (it estimates how the chosen model does on "
                        f"unseen data, scored once at the end); evaluate on 'validation' and set data.holdout")
    if isinstance(task_name, str) and task_name in TASKS:
        eval_table = data.get("eval", {})
        extras = {k: v for k, v in eval_table.items() if k not in EvalSection.model_fields} \
            if isinstance(eval_table, Mapping) else {}
        eval_fn = getattr(TASKS.get(task_name), "evaluation_options", None)
        if eval_fn is not None:
            problems += validate_options(eval_fn, extras, loc="eval")[1]
        else:
            valid = f" Valid keys: {', '.join(EvalSection.model_fields)}."
            problems += [f"eval.{k}: unknown key.{did_you_mean(k, EvalSection.model_fields) or valid}" for k in extras]
    train = data.get("train")
    callbacks = train.get("callbacks", []) if isinstance(train, Mapping) else []
    for i, cb in enumerate(callbacks if isinstance(callbacks, list) else []):
        if isinstance(cb, Mapping):
            problems += _check_callback(dict(cb), i)
    return problems


def repeated_trackers(data: Mapping[str, Any]) -> list[str]:
    """A tracker listed twice would be started twice and log every value twice (or fail on its own run name)."""
    train = data.get("train")
    trackers = train.get("trackers") if isinstance(train, Mapping) else None
    first: dict[str, int] = {}
    problems = []
    for i, name in enumerate(trackers if isinstance(trackers, list) else []):
        if isinstance(name, str) and name in first:
            problems.append(f"train.trackers[{i}]: '{name}' is listed twice (also train.trackers[{first[name]}]); "
                            f"list each tracker once")
        elif isinstance(name, str):
            first[name] = i
    return problems


def _dataset_task_problems(data: Mapping[str, Any], task_name: Any) -> list[str]:
    """A dataset registered with `task=...` feeds only those tasks: say so before anything is loaded."""
    table = data.get("data")
    name = table.get("name") if isinstance(table, Mapping) else None
    if not (isinstance(name, str) and name in DATASETS and isinstance(task_name, str) and task_name in TASKS):
        return []
    serves = DATASETS.entry(name).meta.get("task")
    if serves is None:
        return []
    serves = (serves,) if isinstance(serves, str) else tuple(serves)
    task = TASKS.entry(task_name).name
    if task in serves:
        return []
    fitting = [e.name for e in DATASETS.entries() if task in _tasks_of(e.meta.get("task"))]
    return [f"data.name: dataset '{name}' is for task {' or '.join(repr(t) for t in serves)}, but task.name is "
            f"'{task_name}'. Datasets for '{task}': " + (", ".join(fitting) or "none registered") +
            "; or change task.name"]


def _tasks_of(meta: Any) -> tuple[str, ...]:
    return () if meta is None else (meta,) if isinstance(meta, str) else tuple(meta)


def _check_callback(cb: dict[str, Any], i: int) -> list[str]:
    loc = f"train.callbacks[{i}]"
    name = cb.get("name")
    if not isinstance(name, str):
        return [f"{loc}.name: required: the registered callback to use ({', '.join(CALLBACKS.names())})"]
    if name not in CALLBACKS:
        return [f"{loc}.name: {CALLBACKS.unknown_message(name)}"]
    return validate_options(CALLBACKS.get(name), {k: v for k, v in cb.items() if k != "name"}, loc=loc)[1]


def recipe_problems(exc: ValidationError, data: Mapping[str, Any]) -> list[str]:
    problems = []
    for line, err in zip(format_errors(exc, "", None), exc.errors(include_url=False), strict=True):
        if err["type"] == "extra_forbidden":
            loc = [str(p) for p in err["loc"]]
            parent = ".".join(p for p in loc[:-1] if not p.isdigit())  # optimizer.groups.0 -> optimizer.groups
            model = SECTION_MODELS.get(parent)
            valid = [k for k, f in model.model_fields.items() if not f.exclude] if model else []
            hint = did_you_mean(loc[-1], valid) or (f" Valid keys: {', '.join(valid)}." if valid else "")
            line = f"{_join('', *err['loc'])}: unknown key.{hint}"
        elif err["type"] == "missing":
            key = ".".join(str(p) for p in err["loc"])
            line = f"{key}: required" + (" (every recipe names one)" if key.endswith("name") else "")
        problems.append(line)
    return problems


def check_search(data: Mapping[str, Any]) -> list[str]:
    """Problems with a recipe's [search] table: the space's own form, then each range end and each choice applied
    to the recipe, which must validate (so a misspelt key exits 2 naming it, before any trial runs)."""
    search = data.get("search")
    if not isinstance(search, Mapping) or not isinstance(search.get("space", {}), Mapping):
        return []
    dims, problems = parse_space(search.get("space", {}))
    if search.get("sampler") == "grid":
        problems += grid_problems(dims)
    base = {k: copy.deepcopy(v) for k, v in data.items() if k not in ("search", "sweep")}
    for dim in dims:
        for value in dim.examples():
            try:
                variant = apply_overrides(base, [f"{dim.key}={toml_literal(value)}"])
            except RecipeError as exc:
                problems.append(f"{key_place(dim.key)}: {exc.message}")
                break
            try:
                Recipe.model_validate(variant)
                found = check_builders(variant)
            except ValidationError as exc:
                found = recipe_problems(exc, variant)
            if found:
                problems.append(f"{key_place(dim.key)} = {toml_literal(value)}: " + "; ".join(found))
                break
    return problems
