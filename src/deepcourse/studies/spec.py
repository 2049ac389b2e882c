"""What a study runs (`StudySpec`), as its folder records it: study.json for a search (`deepcourse tune`), sweep.json
for a grid (`deepcourse sweep`). Every worker, on any machine, reads the same file, so they all run the same study;
a search's dimensions come from its recorded space, a sweep's from the points it queued."""
from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from deepcourse.errors import UserError
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.searchspace import Dimension, parse_space
from deepcourse.rundir.files import read_json

#: the file that describes a study's folder, by kind
SPEC_FILES = {"tune": "study.json", "sweep": "sweep.json"}


@dataclass
class StudySpec:
    """What a study runs, as study.json / sweep.json records it (every worker reads the same)."""

    kind: str  # "tune" | "sweep"
    folder: Path
    recipe: Path
    name: str
    storage: str
    monitor: str
    direction: Literal["maximize", "minimize"]
    trials: int
    overrides: list[str] = field(default_factory=list)
    dims: list[Dimension] = field(default_factory=list)
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    epochs: int = 1
    points: list[dict[str, Any]] = field(default_factory=list)  # queued grid points (sweeps, grid searches)


def load_spec(folder: Path, kind: str) -> StudySpec:
    """The study a folder's study.json (`kind` "tune") or sweep.json ("sweep") describes."""
    from deepcourse.training.build import monitor_of

    path = folder / SPEC_FILES[kind]
    if not path.exists():
        what = "study" if kind == "tune" else "sweep"
        raise UserError(f"--resume {folder}: not a {what} folder (no {path.name})")
    record = read_json(path)
    recipe, overrides, points = Path(record["recipe"]), list(record.get("overrides", [])), record.get("points", [])
    base = load_recipe(recipe, overrides)
    monitor, mode = monitor_of(base)  # from the task's class: no task is built
    if kind == "tune":
        dims, _ = parse_space(record["space"])
        trials, sampler, pruner = int(record["trials"]), record["sampler"], record["pruner"]
    else:  # a sweep's grid, rebuilt from the points it queued
        dims, trials, sampler, pruner = _dims_of(points), len(points), "grid", "none"
    return StudySpec(kind=kind, folder=folder, recipe=recipe, name=record.get("study", "sweep"),
                     storage=record.get("storage") or str((folder / "study.log").resolve()), monitor=monitor,
                     direction="maximize" if mode == "max" else "minimize", trials=trials, overrides=overrides,
                     dims=dims, sampler=sampler, pruner=pruner, seed=base.seed, epochs=base.train.epochs,
                     points=points)


def _dims_of(points: Sequence[dict[str, Any]]) -> list[Dimension]:
    """Each parameter's choices, in the order the points name them (labels as queued)."""
    keys: dict[str, list[Any]] = {}
    for point in points:
        for key, label in point.get("params", {}).items():
            keys.setdefault(key, [])
            if label not in keys[key]:
                keys[key].append(label)
    return [Dimension(key, "categorical", choices=tuple(_from_label(v) for v in labels)) for key, labels in
            keys.items()]


def _from_label(label: Any) -> Any:
    """A queued categorical label back to its value (tables were queued as their TOML text)."""
    if isinstance(label, str) and label[:1] in "{[":
        return tomllib.loads(f"v = {label}")["v"]
    return label
