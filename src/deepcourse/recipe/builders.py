"""Calling a registered builder with the keys of a recipe table, validated against its signature.

A builder is a plain function or class. Its type hints are the schema: a recipe table's keys are checked with
pydantic (strict, unknown keys forbidden), so a plugin's `[model]` table gets the same clear errors as a core key.
Parameters the builder names but the recipe does not set are filled from `provided` (data facts such as
`num_classes`, or context such as `data_dir`), which is how a builder asks the dataset for what it needs.
"""
from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import AfterValidator, ConfigDict, ValidationError, create_model

from deepcourse.errors import RecipeError, did_you_mean

_CONFIG = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
_UNSET = object()


@functools.cache
def _parameters(fn: Callable) -> tuple[dict[str, tuple[Any, Any]], bool]:
    """name -> (annotation, default) for the keyword parameters of `fn`; and whether it takes **kwargs."""
    sig = inspect.signature(fn)
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolved forward refs: fall back to no checking for those
        hints = {}
    fields: dict[str, tuple[Any, Any]] = {}
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        default = _UNSET if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    return fields, var_kw


def _no_duplicates(values: Any) -> Any:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice; each value may appear once")
        seen.add(value)
    return values


#: `Annotated[list[str], Unique]`: a builder parameter whose items must differ (column names, class names), refused
#: at `deepcourse check` with the key path instead of quietly meaning something else later
Unique = AfterValidator(_no_duplicates)


def parameters(fn: Callable) -> dict[str, tuple[Any, Any]]:
    """Public view for docs and `deepcourse list -v`: name -> (annotation, default or inspect.Parameter.empty)."""
    return {k: (a, inspect.Parameter.empty if d is _UNSET else d) for k, (a, d) in _parameters(fn)[0].items()}


def _is_tuple(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_tuple(typing.get_args(annotation)[0])
    if origin is tuple:
        return True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_is_tuple(a) for a in typing.get_args(annotation))
    return False


def validate_options(
    fn: Callable,
    options: Mapping[str, Any],
    *,
    loc: str,
    provided: Mapping[str, Any] | None = None,
    exclude: tuple[str, ...] = (),
) -> tuple[dict[str, Any], list[str]]:
    """Check `options` against `fn`'s signature. Returns (kwargs to call it with, problems with key paths).

    With `provided=None` (checking a recipe before any data is loaded) missing required parameters are not
    reported, because the dataset may provide them later.
    """
    fields, var_kw = _parameters(fn)
    model_fields: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for name, (annotation, default) in fields.items():
        if name in exclude:
            continue
        if name in options:
            value = options[name]
            if isinstance(value, list) and _is_tuple(annotation):
                value = tuple(value)
            values[name] = value
        elif provided is not None and name in provided:
            values[name] = provided[name]
        if default is _UNSET:
            model_fields[name] = (annotation, ... if provided is not None else None)
        else:
            model_fields[name] = (annotation, default)
    problems: list[str] = []
    extras = {k: v for k, v in options.items() if k not in fields or k in exclude}
    if extras and not var_kw:
        valid = [k for k in fields if k not in exclude]
        for key in extras:
            hint = did_you_mean(key, valid) or (" Valid keys: " + ", ".join(valid) + "." if valid else
                                                 " This table takes no keys.")
            problems.append(f"{_join(loc, key)}: unknown key.{hint}")
    model = create_model(f"Options_{getattr(fn, '__name__', 'builder')}", __config__=_CONFIG, **model_fields)
    try:
        validated = model(**values)
    except ValidationError as exc:
        problems.extend(format_errors(exc, loc, provided))
        return {}, problems
    kwargs = {k: getattr(validated, k) for k in values}
    if var_kw:
        kwargs.update(extras)
    return kwargs, problems


def call_builder(fn: Callable, options: Mapping[str, Any], *, loc: str, provided: Mapping[str, Any]) -> Any:
    """Validate and call; every problem is reported at once as a RecipeError."""
    kwargs, problems = validate_options(fn, options, loc=loc, provided=provided)
    if problems:
        raise RecipeError(f"invalid [{loc.split('.')[0]}] table", problems)
    return fn(**kwargs)


def _join(loc: str, *parts: Any) -> str:
    out = loc
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out


def format_errors(exc: ValidationError, loc: str, provided: Mapping[str, Any] | None) -> list[str]:
    problems = []
    for err in exc.errors(include_url=False):
        path = _join(loc, *err["loc"])
        kind = err["type"]
        if kind == "missing":
            problems.append(f"{path}: required, and the recipe does not set it" +
                            (" (nor does the dataset provide it)" if provided is not None else ""))
            continue
        shown = err.get("input")
        got = f" (got {shown!r})" if not isinstance(shown, (dict,)) and len(repr(shown)) < 80 else ""
        message = str(err["ctx"]["error"]) if kind == "value_error" and "error" in err.get("ctx", {}) else err["msg"]
        hint = ""
        if kind == "literal_error" and isinstance(shown, str):  # one of a few words: suggest the nearest
            hint = did_you_mean(shown, re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", ""))))
        problems.append(f"{path}: {message[0].lower()}{message[1:]}{got}" + (f".{hint}" if hint else ""))
    return problems
