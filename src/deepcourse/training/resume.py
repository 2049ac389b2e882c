"""Resuming a run: what `run --resume` and `fit(resume=...)` read from the run directory, once, and the continuation
from its newest intact checkpoint.

`read_resume` reads, before any data is loaded: the recipe to train (the run's own, or the one given if it computes
the same), the task's artifacts, the settings the run was launched with and the names of its complete checkpoints.
The main process reads them (the run directory may be on its machine alone) and `collective.on_main` hands them to
the others. `continue_run` then loads the newest of those checkpoints that reads back whole into the built run.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepcourse.errors import CheckpointError, UserError
from deepcourse.recipe.load import load_recipe, read_toml
from deepcourse.recipe.overrides import differing_keys, value_at
from deepcourse.recipe.schema import NON_COMPUTING_KEYS, Recipe
from deepcourse.rundir import files, lock
from deepcourse.rundir.layout import require_run_dir, truncate_metrics, unstarted
from deepcourse.rundir.outputs import writable_folder
from deepcourse.training.accelerator import effective_settings
from deepcourse.training.callbacks import TrainContext
from deepcourse.training.checkpoint import complete_checkpoints, load_latest_intact

log = logging.getLogger(__name__)


@dataclass
class Resume:
    """A run directory as a resume reads it: the recipe to train, the task's artifacts (vocabularies and statistics
    are not fitted anew), run.json (how the run was launched) and its complete checkpoints, newest first."""

    run_dir: Path
    recipe: Recipe
    artifacts: dict[str, Any] | None
    launched: dict[str, Any]
    checkpoints: list[str]


def read_resume(run_dir: Path, recipe: Recipe | str | Path | None = None, overrides: Sequence[str] = ()) -> Resume:
    """Read the run in `run_dir` for a resume. `recipe` is a recipe file or a shipped recipe's name (with `--set`
    `overrides`), an already loaded Recipe, or None for the run's own recipe.toml (with `overrides`); it must compute
    what the run computed (only NON_COMPUTING_KEYS may differ). Refused before any data is loaded: a folder that is
    no run, cannot be written, or is held by another training process."""
    if not unstarted(run_dir):
        require_run_dir(run_dir)
    writable_folder(run_dir, "--resume", resumed=True)  # the run's own files are the ones a resume writes
    holder = lock.holder(run_dir)  # the early check; fit takes the lock itself
    if holder:
        raise CheckpointError(f"--resume {run_dir}: {lock.in_use(holder)}")
    saved = run_dir / "recipe.toml"
    if not saved.is_file():  # stopped before it wrote its recipe
        raise nothing_to_resume(run_dir)
    new = recipe if isinstance(recipe, Recipe) else load_recipe(saved if recipe is None else recipe, overrides)
    if recipe is not None or overrides:  # the run's own recipe as it is computes what it computed
        old, now = load_recipe(data=read_toml(saved)).to_dict(), new.to_dict()
        changed = differing_keys([old, now], ignore=NON_COMPUTING_KEYS)
        if changed:
            raise UserError(f"--resume {run_dir}: the recipe differs from the one this run was started with, in keys "
                            f"that change what is computed: " + ", ".join(changed) +
                            ". Resume with the run's own recipe (omit RECIPE) or start a new run",
                            [f"{k}: run has {value_at(old, k)!r}, recipe has {value_at(now, k)!r}" for k in changed])
    if unstarted(run_dir):
        raise nothing_to_resume(run_dir)
    return Resume(run_dir, new, files.read_json(run_dir / "artifacts.json", missing=None),
                  files.read_json(run_dir / "run.json", missing={}),
                  [p.name for p in reversed(complete_checkpoints(run_dir / "checkpoints"))])


def continue_run(ctx: TrainContext, resume: Resume) -> None:
    """Load the newest checkpoint that reads back whole into the built run (a damaged newest one: the one before it),
    with the settings the run was launched with, and cut metrics.jsonl back to it."""
    if not resume.checkpoints:  # only damaged ones (a run stopped before its first is refused by read_resume)
        raise CheckpointError(f"--resume {ctx.run_dir}: no complete checkpoint in {ctx.run_dir / 'checkpoints'}; "
                              f"start a new run instead")
    check_same_settings(resume, ctx.recipe)
    latest = load_latest_intact(ctx, ctx.run_dir / "checkpoints", resume.checkpoints)
    if ctx.is_main:
        truncate_metrics(ctx.run_dir / "metrics.jsonl", ctx.state.global_step, ctx.state.event)
        log.info(f"deepcourse: resuming {ctx.run_dir} from {latest.name} (epoch {ctx.state.epoch + 1}, "
                 f"step {ctx.state.global_step})")


def nothing_to_resume(run_dir: Path) -> CheckpointError:
    """A run stopped before its first checkpoint: the error says how to start it again in its folder, which `run
    --run-dir` accepts (`rundir.layout.require_free`)."""
    recipe = run_dir / "recipe.toml" if (run_dir / "recipe.toml").is_file() else "RECIPE"
    return CheckpointError(f"--resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'}: the run was "
                           f"stopped before its first one, so there is nothing to resume. Start it again in that "
                           f"folder: deepcourse run {recipe} --run-dir {run_dir}")


def check_same_settings(resume: Resume, recipe: Recipe) -> None:
    """A resumed run must train as it started: the effective precision and accumulation, wherever they came from."""
    started, now = resume.launched, effective_settings(recipe, warn=False)
    differ = [f"{key}: the run trained with {started[key]!r}, now {value!r}"
              for key, value in (("mixed_precision", now.mixed_precision), ("grad_accum", now.grad_accum))
              if key in started and started[key] != value]
    if differ:
        raise CheckpointError(f"--resume {resume.run_dir}: the launch settings differ from the run's; resume with the "
                              f"same (set them in the recipe, or pass the same accelerate launch flags)", differ)
