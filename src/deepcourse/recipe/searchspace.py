"""The `[search.space]` table: what each trial of a study samples, keyed by recipe paths as `--set` writes them.

    [search.space]
    "optimizer.lr" = { low = 1e-4, high = 0.1, log = true }     # a float range (log scale)
    "model.hidden" = { low = 16, high = 128, step = 16 }        # integers when low and high are integers
    "model.dropout" = { low = 0.0, high = 0.5, step = 0.1 }     # a float grid
    "optimizer" = [ { name = "sgd", lr = 0.05 }, { name = "adam", lr = 0.001 } ]   # choices, whole tables too

A space is checked like the rest of the recipe, before anything runs: each range's ends and each choice make a
recipe that must validate, so a misspelt key or a value of the wrong type exits 2 naming the key.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepcourse.errors import did_you_mean
from deepcourse.recipe.overrides import toml_literal

RANGE_KEYS = ("low", "high", "log", "step")


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
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(count)]
        return [int(v) for v in values] if self.kind == "int" else [round(v, 12) for v in values]

    def examples(self) -> list[Any]:
        """The values a check of the recipe tries: both ends of a range, every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


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
        kind = "int" if all(isinstance(v, int) for v in numbers) else "float"
        dims.append(Dimension(key, kind, float(low), float(high), log, None if step is None else float(step)))
    return dims, problems


def grid_problems(dims: list[Dimension]) -> list[str]:
    """The grid sampler tries every value: a range needs a step."""
    return [f"{key_place(d.key)}: the grid sampler needs a list of values or a step" for d in dims
            if d.kind != "categorical" and d.step is None]
