"""Sweeps: run the product of a few recipe values (and seeds), then compare them, resumably.

A sweep folder holds `sweep.json` (the plan) and one run directory per point. Running the same command with
`--resume SWEEP_DIR` skips finished runs, resumes interrupted ones from their checkpoints and starts the rest, so an
interrupted sweep loses at most the steps since each run's last checkpoint.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import catalog
from .checkpoint import latest_checkpoint
from .errors import RecipeError, UserError
from .files import atomic_write_text, read_json, to_json
from .recipe import load_recipe


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """'model.dropout=0,0.5' -> ('model.dropout', [0, 0.5]); values are TOML literals, bare words strings."""
    if "=" not in text:
        raise RecipeError(f"--grid {text}: expected KEY=V1,V2,... e.g. --grid model.dropout=0,0.5")
    key, raw = (part.strip() for part in text.split("=", 1))
    try:
        values = tomllib.loads(f"v = [{raw}]")["v"]
    except tomllib.TOMLDecodeError:
        values = [tomllib.loads(f"v = {v}")["v"] if _is_literal(v) else v.strip() for v in _split_top(raw)]
    if not key or not values:
        raise RecipeError(f"--grid {text}: give a key and at least one value")
    return key, values


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
    return [p for p in (*parts, current) if p.strip()]


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
    raise RecipeError(f"sweep: cannot write {value!r} as a TOML value")


def plan(recipe_path: Path, grids: Sequence[str], seeds: int | None, overrides: Sequence[str]
         ) -> tuple[list[dict[str, Any]], int]:
    base = load_recipe(recipe_path, overrides)  # fail early, once, on the base recipe
    axes = dict(base.sweep.grid)  # the recipe's own ablation, then --grid on top
    axes.update(parse_grid(g) for g in grids)
    axes_list = list(axes.items())
    if not axes_list:
        raise UserError("nothing to sweep: give --grid KEY=V1,V2 (e.g. --grid model.dropout=0,0.5) or a "
                        "[sweep] grid in the recipe")
    seeds = seeds or base.sweep.seeds
    points = []
    for combo in itertools.product(*[values for _, values in axes_list]):
        for s in range(seeds):
            sets = [f"{key}={toml_literal(v)}" for (key, _), v in zip(axes_list, combo)]
            if seeds > 1:
                sets.append(f"seed={base.seed + s}")
            label = ", ".join(f"{key}={_label(v)}" for (key, _), v in zip(axes_list, combo)) or "base"
            points.append({"label": label, "seed": base.seed + s, "overrides": [*overrides, *sets]})
    for i, point in enumerate(points):
        load_recipe(recipe_path, point["overrides"])  # every point must be a valid recipe before anything runs
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", point["label"]).strip("_")[:80]
        point["dir"] = f"{i:03d}-{slug}" + (f"-seed{point['seed']}" if seeds > 1 else "")
    return points, seeds


def _label(value: Any) -> str:
    """Short text for a grid value: tables as 'name=sgd momentum=0.9'."""
    if isinstance(value, dict):
        return "{" + " ".join(f"{k}={_label(v)}" for k, v in value.items()) + "}"
    return toml_literal(value).strip('"') if isinstance(value, (bool, str)) else str(value)


def visible_gpus() -> list[str]:
    """The GPUs sweep jobs may use: those CUDA_VISIBLE_DEVICES lists when it is set (empty: none), else every GPU
    torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class DeviceSlots:
    """Hands each running job a GPU of its own (round robin when there are more jobs than GPUs): without it every
    job would start on the default GPU, 0. Without GPUs, jobs keep the environment they have."""

    def __init__(self, jobs: int, gpus: Sequence[str]) -> None:
        self.free: queue.Queue[str | None] = queue.Queue()
        for i in range(max(1, jobs)):
            self.free.put(gpus[i % len(gpus)] if gpus else None)

    @contextlib.contextmanager
    def take(self) -> Iterator[dict[str, str]]:
        gpu = self.free.get()
        try:
            yield {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}
        finally:
            self.free.put(gpu)


def run_point(recipe: Path, point: dict[str, Any], folder: Path, env: Mapping[str, str] | None = None) -> int:
    """Run (or resume) one point in a subprocess: a failing run does not take the sweep down."""
    run_dir = folder / point["dir"]
    if (run_dir / "summary.json").exists():
        return 0
    cmd = [sys.executable, "-m", "deepcourse", "run"]
    if latest_checkpoint(run_dir / "checkpoints") is not None:
        cmd += ["--resume", str(run_dir)]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # started but never checkpointed: start over
        cmd += [str(recipe), "--run-dir", str(run_dir)]
        for o in point["overrides"]:
            cmd += ["--set", o]
    cmd += ["--no-report"]
    with open(folder / f"{point['dir']}.log", "a", encoding="utf-8") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}).returncode


def sweep(recipe: Path, grids: Sequence[str], *, seeds: int | None = None, overrides: Sequence[str] = (),
          jobs: int = 1, runs_root: Path = Path("runs"), resume: Path | None = None,
          echo: Any = print) -> Path:
    if resume is not None:
        manifest = resume / "sweep.json"
        if not manifest.exists():
            raise UserError(f"--resume {resume}: not a sweep folder (no sweep.json)")
        spec = read_json(manifest)
        folder, recipe, points = resume, Path(spec["recipe"]), spec["points"]
    else:
        recipe = catalog.resolve(recipe)  # a shipped recipe's name: every run gets the file's path
        points, seeds = plan(recipe, grids, seeds, overrides)
        name = load_recipe(recipe, overrides).name
        folder = runs_root / name / f"sweep-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        folder.mkdir(parents=True)
        atomic_write_text(folder / "sweep.json", to_json(
            {"recipe": str(recipe.resolve()), "grids": list(grids), "seeds": seeds, "overrides": list(overrides),
             "points": points}))
    gpus = visible_gpus()
    slots = DeviceSlots(jobs, gpus)
    echo(f"sweep: {len(points)} runs in {folder} ({jobs} at a time" +
         (f", each on its own GPU of {', '.join(gpus)})" if gpus else ")"))

    def one(point: dict[str, Any]) -> tuple[dict[str, Any], int]:
        with slots.take() as env:
            code = run_point(recipe, point, folder, env)
        log = folder / f"{point['dir']}.log"
        status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        echo(f"  {status}: {point['label']} (seed {point['seed']})")
        return point, code

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, points))
    finished = [p for p, code in results if code == 0]
    if finished:
        write_sweep_comparison(folder, finished)
    failed = [p for p, code in results if code != 0]
    if failed:
        raise UserError(f"{len(failed)} of {len(points)} sweep runs failed (logs in {folder}); fix and continue "
                        f"with --resume {folder}")
    return folder


def write_sweep_comparison(folder: Path, points: Sequence[dict[str, Any]]) -> Path:
    """compare.md/.csv and overlaid curves; with several seeds, mean and spread per grid point."""
    import statistics

    from .compare import plot_comparison, summary_row, write_table
    from .rundir import read_run

    runs = [read_run(folder / p["dir"]) for p in points]
    labels = [p["label"] for p in points]
    rows = [summary_row(r, label) for r, label in zip(runs, labels)]
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row, label in zip(rows, labels):
        by_label.setdefault(label, []).append(row)
    table, csv_rows = [], []
    for label, group in by_label.items():
        shown: dict[str, Any] = {"run": label, "seeds": len(group)}
        flat: dict[str, Any] = dict(shown)
        for key in group[0]:
            values = [r.get(key) for r in group]
            if key in ("run", "dir"):
                continue
            if len(values) > 1 and all(isinstance(v, (int, float)) for v in values) and len(set(values)) > 1:
                mean, sd = statistics.fmean(values), statistics.stdev(values)
                shown[key] = f"{mean:.4f} ± {sd:.4f}" if abs(mean) < 100 and "time" not in key \
                    else f"{mean:,.1f} ± {sd:,.1f}"
                flat[key], flat[f"{key} sd"] = mean, sd
            else:
                shown[key] = flat[key] = values[0]
        table.append(shown)
        csv_rows.append(flat)
    plot_comparison(runs, labels, folder, groups=labels)
    md, _ = write_table(table, folder)
    write_table(csv_rows, folder, stem="compare_values")
    (folder / "compare_values.md").unlink()
    (folder / "compare_values.csv").replace(folder / "compare.csv")
    return md
