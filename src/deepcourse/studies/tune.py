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
import os
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcourse.errors import UserError
from deepcourse.recipe import shipped
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.overrides import toml_literal
from deepcourse.recipe.searchspace import check_study, parse_space, pruner_for
from deepcourse.rundir.files import atomic_write_text, read_json, to_json
from deepcourse.studies.processes import visible_gpus
from deepcourse.studies.spec import SPEC_FILES, StudySpec, load_spec
from deepcourse.studies.study import best_trial, open_study, run_command, trial_overrides, work

if TYPE_CHECKING:
    import optuna

STUDY_FILE = SPEC_FILES["tune"]
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def create(recipe: str | Path, overrides: Sequence[str], *, study_name: str | None, storage: str | None,
           trials: int | None, runs_root: Path) -> StudySpec:
    """A new study for RECIPE (or the existing one of the same name and folder, which another worker made)."""
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
        "storage": storage or str((folder / "study.log").resolve()), "space": space,
        "trials": trials or base.search.trials, "sampler": base.search.sampler, "pruner": pruner_for(base, dims),
        "seeds": base.search.seeds, "points": []}
    if base.search.sampler == "grid":
        combos = list(itertools.product(*[d.grid() for d in dims]))
        record["points"] = [{"params": {d.key: d.labels[d.choices.index(v)] if d.kind == "categorical" else v
                                        for d, v in zip(dims, combo, strict=True)},
                             "label": ", ".join(f"{d.key}={toml_literal(v)}" for d, v in zip(dims, combo, strict=True)),
                             "dir": f"grid-{i:03d}"} for i, combo in enumerate(combos)]
        record["trials"] = len(combos)
    folder.mkdir(parents=True, exist_ok=True)
    existing = folder / STUDY_FILE
    if existing.exists():
        joined = read_json(existing)
        if {k: v for k, v in joined.items() if k != "storage"} != {k: v for k, v in record.items() if k != "storage"}:
            raise UserError(f"--study {name}: {folder} holds a study of another recipe, space or budget; choose "
                            f"another name, or join it with the same recipe and options")
        record = joined
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


def final_seeds(spec: StudySpec, study: optuna.Study, seeds: int, echo: Callable[[str], None]
                ) -> list[tuple[str, float]]:
    """The best trial's configuration with seeds seed+1 .. seed+K-1 (the trial itself is seed): (run, value) each."""
    from filelock import FileLock

    best = best_trial(study)
    if best is None:
        return []
    assert best.value is not None  # a best trial is a complete one
    found = [(best.user_attrs.get("run_dir", f"trial-{best.number:04d}"), float(best.value))]
    if seeds < 2:
        return found
    with FileLock(str(spec.folder / "seeds.lock")):
        for offset in range(1, seeds):
            run = spec.folder / f"best-seed{spec.seed + offset}"
            if not (run / "summary.json").exists():
                echo(f"  the best configuration, seed {spec.seed + offset}")
                cmd = run_command(spec, run, [*trial_overrides(spec, best.params), f"seed={spec.seed + offset}"])
                with open(spec.folder / f"{run.name}.log", "a", encoding="utf-8") as log:
                    code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
                if code != 0:
                    echo(f"  FAILED (exit {code}, see {spec.folder / f'{run.name}.log'})")
                    continue
            value = read_json(run / "summary.json").get("best", {}).get(spec.monitor)
            if value is not None:
                found.append((run.name, float(value)))
    return found


def prepare(recipe: str | Path | None, overrides: Sequence[str] = (), *, study_name: str | None = None,
            storage: str | None = None, trials: int | None = None, runs_root: Path = Path("runs"),
            resume: Path | None = None) -> StudySpec:
    """The study to work on: a new one, the one of the same name another worker made, or a folder's (--resume)."""
    if resume is not None:
        return load_spec(resume, "tune")
    if recipe is None:
        raise UserError("give a RECIPE with a [search] table, or --resume STUDY_DIR")
    return create(recipe, overrides, study_name=study_name, storage=storage, trials=trials, runs_root=runs_root)


def tune(spec: StudySpec, *, jobs: int = 1, echo: Callable[[str], None] = print) -> Path:
    """Work on the study here with `jobs` workers (one GPU each when there are GPUs), then report it."""
    gpus = visible_gpus()
    echo(f"tune: study {spec.name}, {spec.trials} trials of {spec.monitor} ({spec.direction}), in {spec.folder}"
         f" ({jobs} worker(s)" + (f", each on its own GPU of {', '.join(gpus)})" if gpus else ")"))
    study = work(spec, jobs=jobs, gpus=gpus, echo=echo)
    return finish(spec, study, echo)


def finish(spec: StudySpec, study: optuna.Study, echo: Callable[[str], None]) -> Path:
    """The best configuration over seeds, then the report (also what each Slurm worker does when it ends)."""
    from deepcourse.studies.report import finish_report

    seeds = int(read_json(spec.folder / STUDY_FILE).get("seeds", 1))
    runs = final_seeds(spec, study, seeds, echo)
    md = finish_report(spec, study, runs if seeds > 1 else ())
    echo(f"study report: {md}")
    return spec.folder
