"""What a study runs (`StudySpec`), as its folder records it: study.json for a search (`deepcourse tune`), sweep.json
for a grid (`deepcourse sweep`). Every worker, on any machine, reads the same file, so they all run the same study;
a search's dimensions come from its recorded space, a sweep's from the points it queued."""
from __future__ import annotations

import contextlib
import shutil
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from deepcourse.errors import UserError, did_you_mean
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.schema import SearchSection
from deepcourse.recipe.searchspace import Dimension, parse_space
from deepcourse.rundir.files import read_json
from deepcourse.studies.resume import refuse_recipe_changes
from deepcourse.studies.store import JOURNAL, storage_of

#: the file that describes a study's folder, by kind
SPEC_FILES = {"tune": "study.json", "sweep": "sweep.json"}
SAMPLERS: tuple[str, ...] = get_args(SearchSection.model_fields["sampler"].annotation)
PRUNERS: tuple[str, ...] = get_args(SearchSection.model_fields["pruner"].annotation)


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
    origin: str = "--storage"  # what gave the storage, for messages


def load_spec(folder: Path, kind: str) -> StudySpec:
    """The study a folder's study.json (`kind` "tune") or sweep.json ("sweep") describes, with its folder's own
    storage wherever the folder now is; a recipe changed since the study began is refused (every worker checks:
    the trials of two recipes are not one study)."""
    from deepcourse.training.build import monitor_of

    path = _spec_file(folder, kind)
    record = _checked(read_json(path), path, kind)
    recipe, overrides, points = Path(record["recipe"]), list(record.get("overrides", [])), record.get("points", [])
    if not recipe.is_file():
        raise UserError(f"{path}: the study's recipe {recipe} is missing (moved or deleted since the study began); "
                        f"put it back where it was")
    base = load_recipe(recipe, overrides)
    refuse_recipe_changes(record, kind, path)
    monitor, mode = monitor_of(base)  # from the task's class: no task is built
    if kind == "tune":
        dims, _ = parse_space(record["space"])
        trials, sampler, pruner = int(record["trials"]), record["sampler"], record["pruner"]
    else:  # a sweep's grid, rebuilt from the points it queued
        dims, trials, sampler, pruner = _dims_of(points), len(points), "grid", "none"
    storage, own = storage_of(record, folder), str((folder / JOURNAL).absolute())  # own: named by its path alone
    return StudySpec(kind=kind, folder=folder, recipe=recipe, name=record.get("study", "sweep"), storage=storage,
                     monitor=monitor,
                     direction="maximize" if mode == "max" else "minimize", trials=trials, overrides=overrides,
                     dims=dims, sampler=sampler, pruner=pruner, seed=base.seed, epochs=base.train.epochs,
                     points=points, origin="" if storage == own else f"{path}: storage")


def read_record(folder: Path, kind: str) -> dict[str, Any]:
    """study.json or sweep.json as recorded, checked."""
    path = _spec_file(folder, kind)
    return _checked(read_json(path), path, kind)


def _spec_file(folder: Path, kind: str) -> Path:
    """The folder's study.json or sweep.json; a folder that is none, or is the other kind, named as such."""
    what = "study" if kind == "tune" else "sweep"
    if not folder.is_dir():
        why = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"--resume {folder}: {why}; give the {what} folder (runs/<recipe>/{what}-<name>/)")
    path = folder / SPEC_FILES[kind]
    if path.exists():
        return path
    other = "sweep" if kind == "tune" else "tune"
    if (folder / SPEC_FILES[other]).exists():
        raise UserError(f"--resume {folder}: is a {'sweep' if other == 'sweep' else 'study'} folder; continue it "
                        f"with deepcourse {other} --resume {folder}")
    raise UserError(f"--resume {folder}: not a {what} folder (no {path.name}); give the {what} folder "
                    f"(runs/<recipe>/{what}-<name>/)")


def _checked(record: Any, path: Path, kind: str) -> dict[str, Any]:
    """Every key a worker reads, of the type and among the values it can run: a hand-edited or damaged study.json
    is named with its key, never a KeyError."""
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a study record (a JSON object); restore it from a copy")
    need: dict[str, type | tuple[type, ...]] = {"recipe": str, "overrides": list}
    need.update({"space": dict, "trials": int, "sampler": str, "pruner": str, "study": str} if kind == "tune"
                else {"points": list})
    for key, types in need.items():
        if not isinstance(record.get(key), types) or isinstance(record.get(key), bool):
            raise UserError(f"{path}: {key}: {'missing' if key not in record else f'{record[key]!r} is not valid'}; "
                            f"restore the file from a copy, or start a new study")
    if kind == "tune":
        for key, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if record[key] not in valid:
                raise UserError(f"{path}: {key}: unknown {key} '{record[key]}'.{did_you_mean(record[key], valid)} "
                                f"Valid: {', '.join(valid)}")
        if record["trials"] < 1:
            raise UserError(f"{path}: trials: {record['trials']} must be at least 1")
    return record


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


@contextlib.contextmanager
def new_folder(folder: Path, also: Sequence[Path] = ()) -> Iterator[Path]:
    """A study's folder, made for the block; when the block fails, the folder (and the parents it needed, and the
    files in `also`) goes again if this block made it, so a study that cannot start leaves nothing behind. A folder
    that existed (another worker's, joined) is left as it was."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    made_files = [p for p in also if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for path in made_files:
            path.unlink(missing_ok=True)
        if made:
            shutil.rmtree(made[0], ignore_errors=True)
            for parent in made[1:]:
                with contextlib.suppress(OSError):
                    parent.rmdir()
        raise
