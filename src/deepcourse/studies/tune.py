"""`deepcourse tune RECIPE`: a hyperparameter search over the recipe's [search] table, as an Optuna study.

    deepcourse tune recipes/ablations/optimizers_search.toml -j 2          # two workers on this machine
    deepcourse tune RECIPE --study lab3 --storage postgresql://host/db      # on every machine of a lab: one study
    deepcourse tune RECIPE --launcher slurm -j 16 --partition gpu --time 120   # 16 workers as a Slurm job array
    deepcourse tune --resume runs/<recipe>/study-<name>                     # continue after a kill

Every trial is a normal run directory (resumable, reportable); the objective is the recipe's monitored metric (its
best evaluation), pruned on the per-epoch evaluations. At the end the best configuration runs `search.seeds` times
and the study folder holds study.md (every trial, the plots, the seeds), study.csv and best.toml.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import logging
import os
import re
import subprocess
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcourse.errors import RecipeWarning, UserError
from deepcourse.recipe import shipped
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.overrides import toml_literal
from deepcourse.recipe.searchspace import check_study, parse_space, pruner_for
from deepcourse.rundir.files import atomic_write_text, read_json, to_json
from deepcourse.studies.processes import WorkerStop, visible_gpus
from deepcourse.studies.resume import kept_changes, recipe_changes, refuse_other_options, written
from deepcourse.studies.spec import SPEC_FILES, StudySpec, load_spec, new_folder, read_record
from deepcourse.studies.store import JOURNAL, absolute, open_storage, shown, storage_of
from deepcourse.studies.study import best_trial, open_study, run_command, trial_overrides, work

if TYPE_CHECKING:
    import optuna

STUDY_FILE = SPEC_FILES["tune"]
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def create(recipe: str | Path, overrides: Sequence[str], *, study_name: str | None, storage: str | None,
           trials: int | None, runs_root: Path) -> StudySpec:
    """A new study for RECIPE (or the existing one of the same name and folder, which another worker made). The
    storage is opened first, so a wrong one is named before any folder is made."""
    check_names(study_name, storage)
    path = shipped.resolve(recipe)
    base = load_recipe(path, overrides)
    space = dict(base.search.space)
    dims, _ = parse_space(space)  # the recipe's validation already reported every problem
    if not dims:
        raise UserError(f"{path}: nothing to search: add a [search.space] table, e.g. "
                        f'"optimizer.lr" = {{low = 1e-4, high = 0.1, log = true}} (see docs/studies.md)')
    check_study(base, dims, trials)
    name = study_name or f"{base.name}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    folder = runs_root / base.name / f"study-{name}"
    record: dict[str, Any] = {
        "kind": "tune", "recipe": str(path.resolve()), "overrides": list(overrides), "study": name,
        "storage": absolute(storage) if storage else JOURNAL, "space": space,
        "trials": trials or base.search.trials, "sampler": base.search.sampler, "pruner": pruner_for(base, dims),
        "seeds": base.search.seeds, "points": [], "written": written(path, overrides)}
    if base.search.sampler == "grid":
        combos = list(itertools.product(*[d.grid() for d in dims]))
        record["points"] = [{"params": {d.key: d.labels[d.choices.index(v)] if d.kind == "categorical" else v
                                        for d, v in zip(dims, combo, strict=True)},
                             "label": ", ".join(f"{d.key}={toml_literal(v)}" for d, v in zip(dims, combo, strict=True)),
                             "dir": f"grid-{i:03d}"} for i, combo in enumerate(combos)]
        record["trials"] = len(combos)
    with new_folder(folder, also=[Path(storage)] if storage and "://" not in storage else []):
        if storage:
            open_storage(storage)  # every problem with it named (as the user wrote it) before the study is recorded
        existing = folder / STUDY_FILE
        if existing.exists():
            record = _join(folder, record, storage)
        else:
            atomic_write_text(existing, to_json(record))
        spec = load_spec(folder, "tune")
        open_study(spec, create=True)
    return spec


def check_names(study_name: str | None, storage: str | None) -> None:
    """--study names one folder under runs/<recipe>/ (never a path out of it) and --storage, when given, a place:
    an empty one would silently mean the default."""
    if study_name is not None and not study_name.strip():
        raise UserError("--study: an empty name; give one such as lab3, or leave --study out for a dated name")
    if study_name is not None and not STUDY_NAME.fullmatch(study_name):
        raise UserError(f"--study {study_name!r}: a study's name is the folder runs/<recipe>/study-NAME, so it is "
                        f"letters, digits, '_', '.' and '-', starting with a letter or digit (at most 100; e.g. "
                        f"lab3), never a path; leave --study out for a dated name")
    if storage is not None and not storage.strip():
        raise UserError("--storage: empty; give a database URL (postgresql://user@host/db, sqlite:///study.db) or a "
                        "journal file's path, or leave --storage out for a journal file in the study folder")


def _join(folder: Path, record: dict[str, Any], storage: str | None) -> dict[str, Any]:
    """The study another worker made in `folder`: joined when it is the same study, else refused, naming how it
    differs."""
    joined = read_record(folder, "tune")
    problems = [f"{key}: {json.dumps(joined.get(key))} in the study, {json.dumps(record[key])} given"
                for key in ("recipe", "overrides", "trials", "sampler", "pruner", "seeds", "space")
                if json.dumps(joined.get(key), sort_keys=True) != json.dumps(record[key], sort_keys=True)]
    if "written" in joined:
        problems += recipe_changes(joined["written"], record["written"], "tune")
    if storage and absolute(storage) != storage_of(joined, folder):
        problems.append(f"--storage {shown(storage)}: the study is stored in {shown(storage_of(joined, folder))}")
    if problems:
        raise UserError(f"--study {record['study']}: {folder} holds a study of another recipe, space or budget; "
                        f"choose another name, or join it with the same recipe and options", problems=problems)
    return joined


def final_seeds(spec: StudySpec, study: optuna.Study, seeds: int, echo: Callable[[str], None],
                stop: WorkerStop | None = None) -> list[tuple[str, float]]:
    """The best trial's configuration with seeds seed+1 .. seed+K-1 (the trial itself is seed): (run, value) each;
    with `stop`, Ctrl-C lets the running one save, then ends the command (`Stopped`).

    With several workers, the one that finishes last runs them: while trials of the study still run (or wait), the
    best is not known yet. Each run is named by the configuration it repeats (`trial-0007-seed4/`), so two workers
    that see different best trials never share a run, and a worker that finds the seeds of its best made (by
    another, or before a requeue) reads them instead of running them again."""
    from filelock import FileLock
    from optuna.trial import TrialState

    best = best_trial(study)
    if best is None:
        return []
    assert best.value is not None  # a best trial is a complete one
    name = best.user_attrs.get("run_dir", f"trial-{best.number:04d}")
    found = [(name, float(best.value))]
    if seeds < 2:
        return found
    busy = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if busy:
        echo(f"  the best configuration's seeds: left to the worker that finishes last ({len(busy)} trial(s) "
             f"still running or queued; deepcourse tune --resume {spec.folder} runs them too)")
        return found
    with FileLock(str(spec.folder / f"{name}-seeds.lock")):
        for offset in range(1, seeds):
            run = spec.folder / f"{name}-seed{spec.seed + offset}"
            if not (run / "summary.json").exists():
                echo(f"  the best configuration ({name}), seed {spec.seed + offset}")
                cmd = run_command(spec, run, [*trial_overrides(spec, best.params), f"seed={spec.seed + offset}"])
                code = _run_logged(cmd, spec.folder / f"{run.name}.log", run, stop)
                if stop is not None:
                    stop.raise_if_stopped(spec.folder)
                if code != 0:
                    echo(f"  FAILED (exit {code}, see {spec.folder / f'{run.name}.log'})")
                    continue
            value = read_json(run / "summary.json").get("best", {}).get(spec.monitor)
            if value is not None:
                found.append((run.name, float(value)))
    return found


def _run_logged(cmd: Sequence[str], log_file: Path, run: Path, stop: WorkerStop | None) -> int:
    with open(log_file, "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if stop is not None:
            stop.started(proc)
        code = proc.wait()
    if stop is not None:
        stop.ended(proc, run, code)
    return code


def prepare(recipe: str | Path | None, overrides: Sequence[str] = (), *, study_name: str | None = None,
            storage: str | None = None, trials: int | None = None, runs_root: Path = Path("runs"),
            resume: Path | None = None) -> StudySpec:
    """The study to work on: a new one, the one of the same name another worker made, or a folder's (--resume:
    the options given must agree with the study, except --trials, its budget, which is applied)."""
    if resume is not None:
        record = read_record(resume, "tune")
        refuse_other_options(record, resume / STUDY_FILE, recipe=shipped.resolve(recipe) if recipe else None,
                             overrides=overrides, study=study_name, storage=storage)
        spec = load_spec(resume, "tune")
        if trials is not None and spec.points and trials != spec.trials:
            raise UserError(f"--trials {trials}: a grid search runs each of its {len(spec.points)} points once; "
                            f"leave out --trials, or change the space and start a new study")
        open_study(spec, create=False)  # the study is there, before anything is changed
        for change in kept_changes(record.get("written", {}), written(spec.recipe, spec.overrides), "tune"):
            if change.startswith("search.trials") and trials is not None:
                continue  # --trials says the budget
            kept = f"its budget of {spec.trials} trials (give --trials N with --resume to change it)" \
                if change.startswith("search.trials") else "the number of final seeds it began with"
            warnings.warn(f"{spec.recipe}: {change} since the study began; the study keeps {kept}", RecipeWarning,
                          stacklevel=2)
        return _new_budget(spec, record, trials) if trials is not None and trials != spec.trials else spec
    if recipe is None:
        raise UserError("give a RECIPE with a [search] table, or --resume STUDY_DIR")
    return create(recipe, overrides, study_name=study_name, storage=storage, trials=trials, runs_root=runs_root)


def _new_budget(spec: StudySpec, record: dict[str, Any], trials: int) -> StudySpec:
    """--trials with --resume: the study's budget from now on (more trials, or fewer: it stops when it has them)."""
    atomic_write_text(spec.folder / STUDY_FILE, to_json({**record, "trials": trials}))
    logging.getLogger(__name__).info(f"tune: the study's budget is now {trials} trials (it was {spec.trials})")
    return load_spec(spec.folder, "tune")


def tune(spec: StudySpec, *, jobs: int = 1, echo: Callable[[str], None] = print) -> Path:
    """Work on the study here with `jobs` workers (one GPU each when there are GPUs), then report it. Ctrl-C: no
    new trial starts, the running ones save, and `Stopped` ends the command (exit 130: `--resume` continues)."""
    gpus = visible_gpus()
    echo(f"tune: study {spec.name}, {spec.trials} trials of {spec.monitor} ({spec.direction}), in {spec.folder}"
         f" ({jobs} worker(s)" + (f", each on its own GPU of {', '.join(gpus)})" if gpus else ")"))
    with WorkerStop() as stop:
        study = work(spec, jobs=jobs, gpus=gpus, echo=echo, stop=stop)
        return finish(spec, study, echo, stop)


def finish(spec: StudySpec, study: optuna.Study, echo: Callable[[str], None], stop: WorkerStop | None = None
           ) -> Path:
    """The best configuration over seeds, then the report (also what each Slurm worker does when it ends)."""
    from deepcourse.studies.report import finish_report

    seeds = int(read_json(spec.folder / STUDY_FILE).get("seeds", 1))
    runs = final_seeds(spec, study, seeds, echo, stop)
    md = finish_report(spec, study, runs if seeds > 1 else ())
    echo(f"study report: {md}")
    return spec.folder
