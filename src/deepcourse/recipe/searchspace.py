"""The `[search.space]` table: what each trial of a study samples, keyed by recipe paths as `--set` writes them.

    [search.space]
    "optimizer.lr" = { low = 1e-4, high = 0.1, log = true }     # a float range (log scale)
    "model.hidden" = { low = 16, high = 128, step = 16 }        # integers when low and high are integers
    "model.dropout" = { low = 0.0, high = 0.5, step = 0.1 }     # a float grid
    "optimizer" = [ { name = "sgd", lr = 0.05 }, { name = "adam", lr = 0.001 } ]   # choices, whole tables too

A space is checked like the rest of the recipe, before anything runs: each range's ends and each choice make a
recipe that must validate, so a misspelt key or a value of the wrong type exits 2 naming the key. So is what cannot
be meant: a step wider than its range, a choice listed twice, a key set twice (two spellings of one key, or a table
choice that holds a key searched on its own), the study's own settings (`search.*`) or the seed. A sweep's grid
(`deepcourse sweep --grid`) goes through the same checks of its keys and values.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deepcourse.errors import RecipeError, RecipeWarning, did_you_mean
from deepcourse.recipe.overrides import toml_literal

if TYPE_CHECKING:
    from deepcourse.recipe.schema import Recipe

RANGE_KEYS = ("low", "high", "log", "step")
#: keys a space or grid may not vary: the study's and sweep's own settings, and what only names or assembles a recipe
NOT_VARIED = ("search", "sweep", "extends", "requires_plugins", "name", "description")


@dataclass(frozen=True)
class Dimension:
    """One key of the space: a float or int range, or a list of choices."""

    key: str
    kind: str  # "float" | "int" | "categorical"
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def labels(self) -> list[Any]:
        """Optuna holds plain values only: a choice that is a table or a list is held by its TOML text."""
        return [c if c is None or isinstance(c, (bool, int, float, str)) else toml_literal(c) for c in self.choices]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            label = trial.suggest_categorical(self.key, self.labels)
            return self.choices[self.labels.index(label)]
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def value_of(self, param: Any) -> Any:
        """The recipe value an Optuna parameter stands for."""
        return self.choices[self.labels.index(param)] if self.kind == "categorical" else param

    def grid(self) -> list[Any]:
        """Every value the grid sampler tries."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.step is None:
            raise ValueError(self.key)
        values = [self.low + i * self.step for i in range(self.steps + 1)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    @property
    def steps(self) -> int:
        """Whole steps from low that stay within high (a range with a step)."""
        return int(math.floor((self.high - self.low) / (self.step or 1) + 1e-9))

    def examples(self) -> list[Any]:
        """The values a check of the recipe tries: both ends of a range and its first step, every choice. A float
        step between whole ends (`{low = 4, high = 8, step = 0.5}`) tries the ends as written and then 4.5, so an
        integer key is refused at the value the step makes, not at an end the user wrote as a whole number."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        ends = [int(self.low), int(self.high)] if self.low.is_integer() and self.high.is_integer() and self.step \
            else [self.low, self.high]
        return ends + ([round(self.low + self.step, 12)] if self.step else [])


def key_place(key: str) -> str:
    return f'search.space["{key}"]'


def parse_space(space: Mapping[str, Any]) -> tuple[list[Dimension], list[str]]:
    """The dimensions of a `[search.space]` table, and every problem with it (key path first)."""
    dims, problems = [], []
    for key, spec in space.items():
        where = key_place(key)
        if isinstance(spec, list):
            if not spec:
                problems.append(f"{where}: an empty list of choices; give at least one value")
            else:
                dims.append(Dimension(key, "categorical", choices=tuple(spec)))
            continue
        if not isinstance(spec, Mapping):
            problems.append(f"{where}: expected a range {{low = ..., high = ...}} or a list of choices "
                            f"(got {spec!r})")
            continue
        unknown = [k for k in spec if k not in RANGE_KEYS]
        problems += [f"{where}.{k}: unknown key.{did_you_mean(k, RANGE_KEYS) or ' Valid keys: low, high, log, step.'}"
                     for k in unknown]
        low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
        numbers = [v for v in (low, high, step) if v is not None]
        if low is None or high is None:
            problems.append(f"{where}: a range needs both low and high")
            continue
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            problems.append(f"{where}: low, high and step must be numbers")
            continue
        if not isinstance(log, bool):
            problems.append(f"{where}.log: must be true or false (got {log!r})")
            continue
        if not low < high:
            problems.append(f"{where}: low ({low}) must be below high ({high})")
            continue
        if log and low <= 0:
            problems.append(f"{where}: a log range needs low > 0 (got {low})")
            continue
        if step is not None and (step <= 0 or (log and step is not None)):
            problems.append(f"{where}.step: " + ("cannot be combined with log = true" if log else
                                                 f"must be positive (got {step})"))
            continue
        if step is not None and step > high - low:
            problems.append(f"{where}.step: {step} is wider than the range {low} .. {high}, so every trial would "
                            f"take low ({low}); give a step of at most {high - low}, or a list of choices")
            continue
        whole = isinstance(low, int) and isinstance(high, int) and (step is None or float(step).is_integer())
        dims.append(Dimension(key, "int" if whole else "float", float(low), float(high), log,
                              None if step is None else float(step)))
    problems += varied_key_problems([(k, v if isinstance(v, list) else []) for k, v in space.items()], key_place)
    problems += [p for key, spec in space.items() if isinstance(spec, list) for p in repeated(key_place(key), spec)]
    return dims, problems


def varied_key_problems(axes: Sequence[tuple[str, Sequence[Any]]], place: Callable[[str], str],
                        seed: bool = False) -> list[str]:
    """Keys of a space or grid (with their choices, [] for a range) that cannot be meant: a study's or sweep's own
    settings; the seed (unless `seed`: a sweep may vary it); one key twice, spelt two ways; a key whose table is
    varied too, before it (the table replaces it) or with choices that set it again (one of the two is dropped)."""
    problems: list[str] = []
    paths = [".".join(part.strip() for part in key.split(".")) for key, _ in axes]
    for i, ((key, _), path) in enumerate(zip(axes, paths, strict=True)):
        top = path.split(".", 1)[0]
        if top in NOT_VARIED:
            problems.append(f"{place(key)}: {top} is not a setting a run computes with; vary model, data, "
                            f"optimizer, scheduler, train or task keys")
        elif path == "seed" and not seed:
            problems.append(f"{place(key)}: the best of several seeds is luck, not a setting; repeat the best "
                            f"configuration over seeds with search.seeds = N instead")
        if path in paths[:i]:
            problems.append(f"{place(key)}: the same key as {place(axes[paths.index(path)][0])}; give each key once")
        for j, ((outer, choices), table) in enumerate(zip(axes, paths, strict=True)):
            if not path.startswith(f"{table}."):
                continue
            rest = path[len(table) + 1:]
            if i < j:
                problems.append(f"{place(key)}: comes before {place(outer)}, which replaces the whole {table} table "
                                f"and with it {rest}; list {table} first")
            setting = [c for c in choices if isinstance(c, Mapping) and _holds(c, rest)]
            if setting:
                problems.append(f"{place(key)}: also set by {place(outer)} (its choice {toml_literal(setting[0])} "
                                f"sets {rest}), so one of the two would be dropped; keep {rest} in one place")
    return problems


def _holds(table: Mapping[str, Any], dotted: str) -> bool:
    node: Any = table
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def repeated(place: str, values: Sequence[Any]) -> list[str]:
    """A value listed twice among a key's choices (1 and 1.0 are one value; tables equal whatever their key order):
    a study would weigh it double, a sweep run it twice as if it were another configuration."""
    seen: set[Any] = set()
    problems = []
    for value in values:
        canon = _canonical(value)
        if canon in seen:
            problems.append(f"{place}: {toml_literal(value)} is listed twice; each value may appear once")
        seen.add(canon)
    return problems


def _canonical(value: Any) -> Any:
    """A hashable form of a TOML value under which equal recipe values are equal (True is not 1)."""
    if isinstance(value, Mapping):
        return ("table", tuple(sorted((k, _canonical(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return (type(value).__name__, value)
    return ("number", float(value))


def grid_problems(dims: list[Dimension]) -> list[str]:
    """The grid sampler tries every value: a range needs a step."""
    return [f"{key_place(d.key)}: the grid sampler needs a list of values or a step" for d in dims
            if d.kind != "categorical" and d.step is None]


def evaluations(epochs: int, every: int | str) -> int:
    """How many times a run of `epochs` evaluates, every `every` epochs ("end": none) and always after the last."""
    if not isinstance(every, int):
        return 1
    return epochs // every + (1 if epochs % every else 0)


def evaluates_once(recipe: Recipe, dims: Sequence[Dimension]) -> bool:
    """Whether every trial evaluates once (unless the space varies how often): a pruner decides between two
    evaluations of a trial, so with one it can only mark a finished trial as pruned."""
    varied = {d.key for d in dims} & {"train.epochs", "eval.every"}
    return not varied and evaluations(recipe.train.epochs, recipe.eval.every) < 2


def study_problems(recipe: Recipe, dims: Sequence[Dimension]) -> list[str]:
    """What the study's sampler and pruner cannot do with this space and recipe (key path first): a pruner chosen
    for trials that evaluate once (it stops a trial between two evaluations: there is none), a sampler of ranges
    over a space of choices only (it would draw every choice at random: nothing of its own)."""
    search, problems = recipe.search, []
    if "pruner" in search.model_fields_set and search.pruner != "none" and evaluates_once(recipe, dims):
        problems.append(f'search.pruner: "{search.pruner}" has nothing to prune: each trial evaluates once '
                        f"(train.epochs = {recipe.train.epochs}, eval.every = {recipe.eval.every}) and a pruner "
                        f'stops a trial between evaluations; set search.pruner = "none", or train more epochs')
    if search.sampler in ("cmaes", "qmc") and all(d.kind == "categorical" for d in dims):
        problems.append(f'search.sampler: "{search.sampler}" samples ranges ({{low = ..., high = ...}}) and every '
                        f"key of this space is a list of choices, which it would draw at random; use \"tpe\" or "
                        f'"random" (or "grid" to try every combination)')
    return problems


def pruner_for(recipe: Recipe, dims: Sequence[Dimension]) -> str:
    """The pruner a study uses: the recipe's, except the default one for trials that evaluate once, where it would
    only mark finished trials below the median as pruned (and leave them out of the best): none."""
    chosen = "pruner" in recipe.search.model_fields_set
    return "none" if not chosen and evaluates_once(recipe, dims) else recipe.search.pruner


def study_warnings(recipe: Recipe, dims: Sequence[Dimension], trials: int | None = None) -> list[str]:
    """What a study runs though not as written: a key with one choice, a range whose high no step reaches, a key
    that changes nothing the trials are scored on, choices that a sampler of ranges draws at random, a budget the
    grid sampler does not use (`trials`: --trials, when given)."""
    from deepcourse.recipe.schema import NON_COMPUTING_KEYS

    search, said = recipe.search, []
    for d in dims:
        where = key_place(d.key)
        if d.kind == "categorical" and len(d.choices) == 1:
            said.append(f"{where}: one choice ({toml_literal(d.choices[0])}): every trial uses it; set it in the "
                        f"recipe instead, or give more choices")
        top = d.low + d.steps * (d.step or 1)
        if d.kind != "categorical" and d.step is not None and top < d.high - 1e-9 * max(1.0, abs(d.high)):
            said.append(f"{where}: high ({_number(d.high)}) is not reached in steps of {_number(d.step)} from "
                        f"{_number(d.low)}; the highest value tried is {_number(top)}")
        if d.key.startswith(tuple(k for k in NON_COMPUTING_KEYS if k not in NOT_VARIED)):
            said.append(f"{where}: {d.key} does not change what a run computes, so every trial of it scores alike")
    if search.sampler in ("cmaes", "qmc") and any(d.kind == "categorical" for d in dims) and \
            any(d.kind != "categorical" for d in dims):
        keys = ", ".join(d.key for d in dims if d.kind == "categorical")
        said.append(f'search.sampler: "{search.sampler}" samples the ranges; the choices ({keys}) it draws at '
                    f"random, each on its own")
    points = math.prod(len(d.choices) if d.kind == "categorical" else d.steps + 1 for d in dims)
    asked = trials if trials is not None else search.trials if "trials" in search.model_fields_set else points
    if search.sampler == "grid" and asked != points:
        shown = f"--trials {trials}" if trials is not None else f"search.trials = {search.trials}"
        said.append(f"{shown} is not used: the grid sampler runs each of the space's {points} points once")
    return said


def check_study(recipe: Recipe, dims: Sequence[Dimension], trials: int | None = None) -> None:
    """Refuse a study its sampler or pruner cannot run as meant (exit 2, naming the recipe file and key); warn
    about what runs, but not as written."""
    import warnings

    problems = study_problems(recipe, dims)
    if problems:
        where = f"{recipe.source}: " if recipe.source else ""
        raise RecipeError(f"{where}the study cannot run as written", problems)
    for said in study_warnings(recipe, dims, trials):
        warnings.warn(said, RecipeWarning, stacklevel=2)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
