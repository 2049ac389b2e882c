"""Sweeps: run the product of a few recipe values (and seeds), then compare them, resumably.

A sweep is a study (`deepcourse.studies.study`) whose trials are the grid's points, queued in its storage when the sweep
is created: the same workers, resume path and results table as a search. A sweep folder holds `sweep.json` (the
plan), the study's storage and one run directory per point. `--resume SWEEP_DIR` skips finished runs, resumes
interrupted ones from their checkpoints and starts the rest, so an interrupted sweep loses at most the steps since
each run's last checkpoint.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcourse.errors import RecipeError, UserError
from deepcourse.recipe import shipped
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.overrides import parse_override, toml_literal
from deepcourse.recipe.searchspace import Dimension, repeated, varied_key_problems
from deepcourse.rundir.files import atomic_write_text, to_json
from deepcourse.studies.processes import WorkerStop, visible_gpus
from deepcourse.studies.resume import refuse_other_options, written
from deepcourse.studies.spec import SPEC_FILES, StudySpec, load_spec, new_folder, read_record
from deepcourse.studies.store import JOURNAL

if TYPE_CHECKING:
    import optuna


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """'model.dropout=0,0.5' -> ('model.dropout', [0, 0.5]); values are TOML literals, bare words strings."""
    if "=" not in text:
        raise RecipeError(f"--grid {text}: expected KEY=V1,V2,... e.g. --grid model.dropout=0,0.5")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        values = tomllib.loads(f"v = [{raw}]")["v"]
    except tomllib.TOMLDecodeError:
        parts = _split_top(raw)
        if any(not p.strip() for p in parts[:-1]):
            raise RecipeError(f"--grid {text}: an empty value between two commas; give each value once, e.g. "
                              f"--grid {key or 'KEY'}=V1,V2") from None
        values = [tomllib.loads(f"v = {v}")["v"] if _is_literal(v) else v.strip() for v in parts if v.strip()]
    if not key or not values:
        raise RecipeError(f"--grid {text}: give a key and at least one value")
    try:
        parse_override(f"{key}=0")
    except RecipeError:
        raise RecipeError(f"--grid {text}: '{key}' is not a dotted key path such as model.dropout") from None
    return key, values


def grid_axes(recipe: Path, own: dict[str, list[Any]], grids: Sequence[str], repeat: str | None = None
              ) -> dict[str, list[Any]]:
    """The sweep's axes: the recipe's [sweep] grid, then --grid on top (a --grid key replaces the recipe's values),
    each key once and each value once; keys checked as a search space's are (`varied_key_problems`). `repeat`: how
    the seeds were asked for (--seeds N) when each point runs over several: then the grid may not vary the seed too
    (each run's seed would be set twice, the last winning: the runs would repeat one another)."""
    axes, places = dict(own), {k: f'{recipe}: sweep.grid["{k}"]' for k in own}
    given: dict[str, str] = {}
    for text in grids:
        key, values = parse_grid(text)
        if key in given:
            raise RecipeError(f"--grid {key}: given twice ({given[key]} and {text}); give each key once with all "
                              f"its values, e.g. --grid {key}=V1,V2,V3")
        given[key], axes[key], places[key] = text, values, f"--grid {key}"
    problems = varied_key_problems(list(axes.items()), places.__getitem__, seed=True)
    problems += [p for key, values in axes.items() for p in repeated(places[key], values)]
    if repeat and "seed" in axes:
        problems.append(f"{places['seed']}: varies the seed, and {repeat} repeats every point over seeds too, so "
                        f"the runs would repeat one another; vary the seed one way: --grid seed=V1,V2,... or "
                        f"--seeds N")
    if problems:
        raise RecipeError(None, problems)
    return axes


def _is_literal(text: str) -> bool:
    try:
        tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def _split_top(raw: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in raw:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def plan(recipe_path: Path, grids: Sequence[str], seeds: int | None, overrides: Sequence[str]
         ) -> tuple[list[Dimension], list[dict[str, Any]], int]:
    """The grid as study dimensions (each axis a list of choices, the seeds one more) and every point to queue."""
    base = load_recipe(recipe_path, overrides)  # fail early, once, on the base recipe
    repeat = f"--seeds {seeds}" if seeds else f"sweep.seeds = {base.sweep.seeds}"
    seeds = seeds or base.sweep.seeds
    axes = grid_axes(recipe_path, base.sweep.grid, grids, repeat if seeds > 1 else None)
    axes_list = list(axes.items())
    if not axes_list and seeds < 2:
        raise UserError("nothing to sweep: give --grid KEY=V1,V2 (e.g. --grid model.dropout=0,0.5), a [sweep] grid "
                        "in the recipe, or --seeds N to repeat the recipe over N seeds")
    if axes_list and seeds < 2 and all(len(values) == 1 for _, values in axes_list):
        only = ", ".join(f"{key}={_label(values[0])}" for key, values in axes_list)
        run = " ".join(f"--set {key}={toml_literal(values[0])}" for key, values in axes_list)
        raise UserError(f"nothing to sweep: the grid has one point ({only}) and one seed, which is one run: give "
                        f"more values or --seeds N, or run it with deepcourse run {recipe_path} {run}")
    dims = [Dimension(key, "categorical", choices=tuple(values)) for key, values in axes_list]
    if seeds > 1:
        dims.append(Dimension("seed", "categorical", choices=tuple(range(base.seed, base.seed + seeds))))
    points: list[dict[str, Any]] = []
    for combo in itertools.product(*[values for _, values in axes_list]):
        for s in range(seeds):
            sets = [f"{key}={toml_literal(v)}" for (key, _), v in zip(axes_list, combo, strict=True)]
            params = {dim.key: dim.labels[dim.choices.index(v)] for dim, v in zip(dims, combo, strict=False)}
            if seeds > 1:
                sets.append(f"seed={base.seed + s}")
                params["seed"] = base.seed + s
            label = ", ".join(f"{key}={_label(v)}" for (key, _), v in zip(axes_list, combo, strict=True)) or "base"
            points.append({"label": label, "seed": base.seed + s, "overrides": [*overrides, *sets], "params": params})
    for i, point in enumerate(points):
        load_recipe(recipe_path, point["overrides"])  # every point must be a valid recipe before anything runs
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", point["label"]).strip("_")[:80]
        point["dir"] = f"{i:03d}-{slug}" + (f"-seed{point['seed']}" if seeds > 1 else "")
    return dims, points, seeds


def _label(value: Any) -> str:
    """Short text for a grid value: tables as 'name=sgd momentum=0.9'."""
    if isinstance(value, dict):
        return "{" + " ".join(f"{k}={_label(v)}" for k, v in value.items()) + "}"
    return toml_literal(value).strip('"') if isinstance(value, (bool, str)) else str(value)


def sweep(recipe: Path | None, grids: Sequence[str], *, seeds: int | None = None, overrides: Sequence[str] = (),
          jobs: int = 1, runs_root: Path = Path("runs"), resume: Path | None = None,
          echo: Callable[[str], None] = print) -> Path:
    """Run the grid (or continue it: the recipe, --grid, --seeds and --set given with --resume must be the sweep's)
    as a study of queued points, then compare the runs. Ctrl-C: the running points save, then `Stopped`."""
    from deepcourse.studies.study import work

    if resume is not None:
        record = read_record(resume, "sweep")
        axes = [dict(parse_grid(g) for g in given) for given in (record.get("grids", []), grids)] if grids else None
        refuse_other_options(record, resume / SPEC_FILES["sweep"], recipe=shipped.resolve(recipe) if recipe else None,
                             overrides=overrides, grid=axes, seeds=seeds)
        spec = load_spec(resume, "sweep")
    elif recipe is None:
        raise UserError("give a RECIPE and --grid values, or --resume SWEEP_DIR")
    else:
        spec = _create(shipped.resolve(recipe), grids, seeds, overrides, runs_root)
    gpus = visible_gpus()
    echo(f"sweep: {len(spec.points)} runs in {spec.folder} ({jobs} at a time" +
         (f", each on its own GPU of {', '.join(gpus)})" if gpus else ")"))
    with WorkerStop() as stop:
        study = work(spec, jobs=jobs, gpus=gpus, echo=echo, stop=stop)
    from deepcourse.studies.report import write_trials_table

    write_trials_table(spec, study)
    latest = latest_trials_by_dir(study)
    finished = [p for p in spec.points if latest.get(p["dir"]) == "COMPLETE"]
    if finished:
        write_sweep_comparison(spec.folder, finished)
    failed = len(spec.points) - len(finished)
    if failed:
        raise UserError(f"{failed} of {len(spec.points)} sweep runs failed (logs in {spec.folder}); fix and continue "
                        f"with --resume {spec.folder}")
    return spec.folder


def _create(recipe: Path, grids: Sequence[str], seeds: int | None, overrides: Sequence[str], runs_root: Path
            ) -> StudySpec:
    """A new sweep's folder, its plan and its queued points (nothing left behind when it cannot start)."""
    from deepcourse.studies.study import open_study

    _, points, seeds = plan(recipe, grids, seeds, overrides)  # a shipped recipe's name: every run gets the path
    base = load_recipe(recipe, overrides)
    folder = runs_root / base.name / f"sweep-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if folder.exists():
        raise UserError(f"--runs-root {runs_root}: {folder} exists (a sweep started this second); start again")
    with new_folder(folder):
        record = {"recipe": str(recipe.resolve()), "grids": list(grids), "seeds": seeds, "overrides": list(overrides),
                  "points": points, "study": "sweep", "storage": JOURNAL, "written": written(recipe, overrides)}
        atomic_write_text(folder / SPEC_FILES["sweep"], to_json(record))
        spec = load_spec(folder, "sweep")
        open_study(spec, create=True)
    return spec


def latest_trials_by_dir(study: optuna.Study) -> dict[str, str]:
    """Each point's run directory -> the state of its latest trial (retries replace the failed ones)."""
    states: dict[str, str] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if "run_dir" in trial.user_attrs and not trial.user_attrs.get("skipped"):
            states[trial.user_attrs["run_dir"]] = trial.state.name
    return states


def write_sweep_comparison(folder: Path, points: Sequence[dict[str, Any]]) -> Path:
    """compare.md/.csv and overlaid curves; with several seeds, mean, spread, 95% interval and significance per
    grid point."""
    from deepcourse.results.compare import write_grouped
    from deepcourse.rundir.layout import read_run

    runs = [read_run(folder / p["dir"]) for p in points]
    return write_grouped(runs, [p["label"] for p in points], folder)
