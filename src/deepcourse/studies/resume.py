"""What a study keeps when it is resumed or joined: the recipe, its overrides, its space or grid and its storage, as
they were when it began. Trials that ran one recipe and trials that ran another are not one study, so a difference
is refused with the difference named; what is safe to change (the budget, `--trials`) is applied, and said.

A study records its recipe as written (`written` in study.json / sweep.json: the file with the recipes it extends
merged in and its --set applied, before any default), and every worker compares the recipe as written now, so an
edit of the file, or of a recipe it extends, is caught on every machine, not only by the one that was told. A newer
deepcourse or plugin with other defaults is no edit: defaults are not compared."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepcourse.errors import UserError
from deepcourse.recipe.load import resolve_with_origins
from deepcourse.recipe.overrides import apply_overrides, differing_keys, flatten
from deepcourse.recipe.schema import NON_COMPUTING_KEYS
from deepcourse.studies.store import absolute, shown, storage_of

#: keys a resumed study may see changed in its recipe, by kind: the ones that change how a run saves or shows
#: itself, and the other kind's table; a search's budget and final seeds are its own (changed with --trials)
UNCHECKED = {"tune": tuple(k for k in NON_COMPUTING_KEYS if k != "search") + ("search.trials", "search.seeds", "name"),
             "sweep": tuple(k for k in NON_COMPUTING_KEYS if k != "sweep") + ("name",)}
KEPT = {"tune": ("search.trials", "search.seeds")}
TABLES = ("search.space", "sweep.grid")  # tables keyed by recipe paths
FRESH = {"tune": "start a new study (another --study NAME)", "sweep": "start a new sweep (leave out --resume)"}


def written(recipe: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """The recipe as written: its `extends` chain merged, the overrides applied, no defaults (JSON values)."""
    data, _ = resolve_with_origins(recipe)
    data = apply_overrides(dict(data), overrides)
    data.pop("extends", None)
    return dict(json.loads(json.dumps(data, default=str)))


def recipe_changes(recorded: Mapping[str, Any], now: Mapping[str, Any], kind: str) -> list[str]:
    """'key: before -> now' for each key of the recipe as written that a resumed study cannot take."""
    before, after = _entries(recorded), _entries(now)
    return [_change(key, before, after) for key in differing_keys([before, after], ignore=UNCHECKED[kind])]


def kept_changes(recorded: Mapping[str, Any], now: Mapping[str, Any], kind: str) -> list[str]:
    """Changes of the keys the study keeps as they were (a search's budget and seeds): said, not applied."""
    keys = [k for k in differing_keys([recorded, now]) if k.startswith(KEPT.get(kind, ()))]
    return [_change(key, recorded, now) for key in keys]


def _entries(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with each entry of a table keyed by recipe paths (the space, the grid) as its JSON text: compared and
    named whole, as `search.space["optimizer.lr"]`, not split at the dots of its key."""
    out = json.loads(json.dumps(data))
    for table in TABLES:
        section, name = table.split(".")
        inner = out.get(section, {}).get(name) if isinstance(out.get(section), dict) else None
        if isinstance(inner, dict):
            out[section][name] = {key: json.dumps(value, sort_keys=True) for key, value in inner.items()}
    return dict(out)


def _change(key: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    old, new = (json.dumps(flatten(d)[key]) if key in flatten(d) else "(not set)" for d in (before, after))
    for table in TABLES:
        if key.startswith(f"{table}."):
            key = f'{table}["{key[len(table) + 1:]}"]'
            old, new = (v if v == "(not set)" else json.loads(v) for v in (old, new))
    return f"{key}: {old} -> {new}"


def refuse_recipe_changes(record: Mapping[str, Any], kind: str, spec_file: Path) -> None:
    """The recipe as written now must be the one the study began with (a study recorded before this check
    recorded no `written`: nothing to compare)."""
    if "written" not in record:
        return
    changes = recipe_changes(record["written"], written(Path(record["recipe"]), record.get("overrides", [])), kind)
    if changes:
        what = "study" if kind == "tune" else "sweep"
        raise UserError(f"{spec_file}: the recipe {record['recipe']} changed since the {what} began; its runs would "
                        f"not be one {what}. Undo the change, or {FRESH[kind]}", problems=changes)


def refuse_other_options(record: Mapping[str, Any], spec_file: Path, *, recipe: Path | None,
                         overrides: Sequence[str], **given: Any) -> None:
    """Options given with --resume must say what the study already is (or be left out): RECIPE, --set, and by kind
    --study and --storage (a search), --grid and --seeds (a sweep)."""
    kind = "tune" if spec_file.name == "study.json" else "sweep"
    what = "study" if kind == "tune" else "sweep"
    problems = []
    if recipe is not None and recipe.resolve() != Path(record["recipe"]).resolve():
        problems.append(f"RECIPE {recipe}: the {what} runs {record['recipe']}")
    if overrides and list(overrides) != list(record.get("overrides", [])):
        problems.append(f"--set {' '.join(overrides)}: the {what}'s runs have "
                        f"{' '.join(record.get('overrides', [])) or 'no --set'}")
    for option, value in given.items():
        if value is None or value == () or value == []:
            continue
        problem = _option_problem(option, value, record, spec_file.parent)
        if problem:
            problems.append(problem)
    if problems:
        raise UserError(f"--resume {spec_file.parent}: a {what} keeps what it began with; leave these out, or "
                        f"{FRESH[kind]}", problems=problems)


def _option_problem(option: str, value: Any, record: Mapping[str, Any], folder: Path) -> str | None:
    if option == "study":
        return None if value == record.get("study") else f"--study {value}: the study is {record.get('study')}"
    if option == "storage":
        ours = storage_of(record, folder)
        return None if absolute(value) == ours else f"--storage {shown(value)}: the study is stored in {shown(ours)}"
    if option == "grid":  # (the sweep's axes, the axes given), each {key: values}
        before, after = value
        if before == after:
            return None
        changed = [f"{k}: {before.get(k, '(not in the grid)')} -> {after.get(k, '(not in the grid)')}"
                   for k in sorted({*before, *after}) if before.get(k) != after.get(k)]
        return f"--grid: {'; '.join(changed)}"
    if option == "seeds":
        return None if value == record.get("seeds") else f"--seeds {value}: the sweep has {record.get('seeds')}"
    raise AssertionError(option)

