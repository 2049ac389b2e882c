"""Inference from a finished run: rebuild its task and model from the run's own files, then evaluate or predict.

Nothing here needs the training data: the best weights, the facts the model was built from and the task's artifacts
(vocabularies, class names, statistics) are all in the run directory.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from deepcourse.errors import CheckpointError, DataError, RecipeWarning, UserError
from deepcourse.recipe.load import load_recipe
from deepcourse.results.predictions import RowWriter, require_rows, staged_file
from deepcourse.rundir.files import load_weights
from deepcourse.rundir.layout import require_run_dir
from deepcourse.task import Task
from deepcourse.training.accelerator import make_accelerator, torch_threads
from deepcourse.training.build import Trained, build_run
from deepcourse.training.checkpoint import STEP_DIR, best_folder, latest_checkpoint, load_facts
from deepcourse.training.evaluation import evaluate_split

#: the most answers `predict --nbest` and `explain --nbest` give per input: each is a column of the output, and list
#: Viterbi keeps that many partial paths for every tag at every word
MAX_NBEST = 100


def load_trained(run_dir: Path, *, which: str = "best") -> Trained:
    """(recipe, task, facts, artifacts, model) of a run, with its best (or latest) weights loaded. Weights other than
    the ones asked for (the previous best/ a crash left, an older checkpoint than the newest) are used with a
    warning naming both."""
    require_run_dir(run_dir)
    recipe = load_recipe(run_dir / "recipe.toml")
    best = best_folder(run_dir)
    if best.name != "best":
        warnings.warn(f"{run_dir / 'best'} is missing (a crash while it was replaced?); using the previous best "
                      f"weights in {best}", RecipeWarning, stacklevel=2)
    facts, artifacts = load_facts(best)
    built = build_run(recipe, facts=facts)  # the task and the model alone: no data, optimizer or loaders
    task, model = built.task, built.model
    weights = best / "model.safetensors"
    if which == "latest":
        weights = latest_weights(run_dir)
    load_weights(model, weights)
    assert task is not None  # build_run with facts builds the task
    return Trained(recipe, task, facts, artifacts, model)


def latest_weights(run_dir: Path) -> Path:
    """The weights of a run's newest complete checkpoint; a newer one that is incomplete (a crash while it was
    written) is named in a warning, so an older state is never taken for the latest without a word."""
    folder = run_dir / "checkpoints"
    latest = latest_checkpoint(folder)
    if latest is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint in {folder}; use --checkpoint best")
    step = int(STEP_DIR.match(latest.name).group(1))  # type: ignore[union-attr]  # listed by its name
    newer = sorted(p.name for p in folder.iterdir() if (m := STEP_DIR.match(p.name)) and int(m.group(1)) > step)
    if newer:
        warnings.warn(f"{folder / newer[-1]} is incomplete (a crash while it was written?); using the latest "
                      f"complete checkpoint, {latest}", RecipeWarning, stacklevel=3)
    return latest / "model.safetensors"


def require_nbest(nbest: int | None, option: str = "--nbest") -> None:
    """Refuse an n-best list longer than MAX_NBEST before anything is loaded: the decoder's memory grows with it."""
    if nbest is not None and nbest > MAX_NBEST:
        raise UserError(f"{option} {nbest}: at most {MAX_NBEST} answers per input (each is a column of the output, "
                        f"and the decoder keeps that many partial paths per tag and word); use --nbest {MAX_NBEST} "
                        f"or fewer")


def require_data_files(data_dir: str | Path | None) -> None:
    """An empty `--data-dir` holds no split: refused, never a silent fall-back to where the run was trained from."""
    folder = Path(data_dir) if data_dir else None
    if folder is not None and folder.is_dir() and not any(not p.name.startswith(".") for p in folder.iterdir()):
        raise DataError(f"--data-dir {data_dir}: the folder is empty; give the folder that holds the split's files, "
                        f"or leave --data-dir out to read the split where the run was trained from")


def as_option(exc: DataError, data_dir: str | Path | None) -> DataError:
    """A data error about the folder `--data-dir` gave, named as the option (the dataset sees it as data.data_dir)."""
    text = exc.render()
    if not data_dir or not text.startswith("data.data_dir: "):
        return exc
    head, advice, _ = text.removeprefix("data.data_dir: ").partition("; put them there")
    return DataError(f"--data-dir: {head}" + ("; give the folder that holds the split's files, or leave --data-dir out "
                                              "to read the split where the run was trained from" if advice else ""))


def evaluate_run(run_dir: Path, *, split: str | None = None, data_dir: str | Path | None = None, which: str = "best",
                 progress: bool = True, split_key: str | None = None,
                 predictions: Path | None = None) -> tuple[Task, dict[str, Any]]:
    """Metrics of a finished run's weights on a split; `data_dir` may hold only that split's files. `split_key`
    names where `split` came from in messages (the command line's `--split tset`). `predictions`: also write every
    sample's prediction there (the task's `prediction_rows`), through a temporary file."""
    require_data_files(data_dir)
    recipe, task, _, artifacts, model = load_trained(run_dir, which=which)
    with torch_threads(recipe.train.threads), contextlib.ExitStack() as stack:
        hooks: dict[str, Any] = {}
        if predictions is not None:
            require_rows(task, recipe.task.name)
            writer = RowWriter(task, stack.enter_context(staged_file(predictions)))
            hooks = {"on_split": writer.start, "on_batch": writer.batch}
        try:
            result = evaluate_split(task, model, recipe, artifacts, split=split, data_dir=data_dir,
                                    progress=progress, key=split_key, **hooks)
        except DataError as exc:
            raise as_option(exc, data_dir) from None
    return task, {"run_dir": str(run_dir), "split": result.split, **result.metrics}


def predict_run(run_dir: Path, inputs: Sequence[str], *, batch_size: int = 64,
                nbest: int = 1) -> tuple[Task, Iterator[Any]]:
    """The task's predictions for `inputs` (files or text, as the task reads them), streamed in batches, with the
    model placed and cast as for evaluation. `nbest` > 1: the task's n best answers per input, for a task that
    gives them (`Task.supports_nbest`), at most MAX_NBEST."""
    require_nbest(nbest)
    recipe, task, _, artifacts, model = load_trained(run_dir)
    if nbest > 1 and not task.supports_nbest:
        raise UserError(f"--nbest {nbest}: task '{recipe.task.name}' gives one prediction per input (n-best lists "
                        f"are a tagger's K best tag sequences); use --nbest 1, or --json for the top classes")
    task.predict_options = {**getattr(task, "predict_options", {}), "nbest": nbest}
    task.setup_data(recipe.data, splits=(), seed=recipe.data_seed, artifacts=artifacts)
    accelerator = make_accelerator(recipe, trackers=False, warn=False)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    model.eval()
    return task, task.predict(model, inputs, batch_size=batch_size, device=accelerator.device)


def breakdown_run(run_dir: Path, *, split: str | None = None, data_dir: str | Path | None = None,
                  which: str = "best") -> tuple[dict[str, Any], list[str]]:
    """`evaluate --breakdown`: the task's breakdown of a split's scores (`Task.breakdown`), as numbers and lines."""
    require_data_files(data_dir)
    recipe, task, _, artifacts, model = load_trained(run_dir, which=which)
    if type(task).breakdown is Task.breakdown:
        raise UserError(f"--breakdown: task '{recipe.task.name}' has no breakdown of its scores (its plugin does not "
                        f"implement Task.breakdown); `deepcourse evaluate` without --breakdown prints the metrics")
    with torch_threads(recipe.train.threads):
        try:
            return task.breakdown(model, recipe, artifacts, split=split, data_dir=data_dir)
        except DataError as exc:
            raise as_option(exc, data_dir) from None
