"""Inference from a finished run: rebuild its task and model from the run's own files, then evaluate or predict.

Nothing here needs the training data: the best weights, the facts the model was built from and the task's artifacts
(vocabularies, class names, statistics) are all in the run directory.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from deepcourse.errors import CheckpointError, UserError
from deepcourse.recipe.load import load_recipe
from deepcourse.results.predictions import RowWriter, require_rows, staged_file
from deepcourse.rundir.files import load_weights
from deepcourse.rundir.layout import require_run_dir
from deepcourse.task import Task
from deepcourse.training.accelerator import make_accelerator, torch_threads
from deepcourse.training.build import Trained, build_run
from deepcourse.training.checkpoint import best_folder, latest_checkpoint, load_facts
from deepcourse.training.evaluation import evaluate_split


def load_trained(run_dir: Path, *, which: str = "best") -> Trained:
    """(recipe, task, facts, artifacts, model) of a run, with its best (or latest) weights loaded."""
    require_run_dir(run_dir)
    recipe = load_recipe(run_dir / "recipe.toml")
    best = best_folder(run_dir)
    facts, artifacts = load_facts(best)
    built = build_run(recipe, facts=facts)  # the task and the model alone: no data, optimizer or loaders
    task, model = built.task, built.model
    weights = best / "model.safetensors"
    if which == "latest":
        latest = latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{run_dir}: no complete checkpoint")
        weights = latest / "model.safetensors"
    load_weights(model, weights)
    assert task is not None  # build_run with facts builds the task
    return Trained(recipe, task, facts, artifacts, model)


def evaluate_run(run_dir: Path, *, split: str | None = None, data_dir: str | Path | None = None, which: str = "best",
                 progress: bool = True, split_key: str | None = None,
                 predictions: Path | None = None) -> tuple[Task, dict[str, Any]]:
    """Metrics of a finished run's weights on a split; `data_dir` may hold only that split's files. `split_key`
    names where `split` came from in messages (the command line's `--split tset`). `predictions`: also write every
    sample's prediction there (the task's `prediction_rows`), through a temporary file."""
    recipe, task, _, artifacts, model = load_trained(run_dir, which=which)
    with torch_threads(recipe.train.threads), contextlib.ExitStack() as stack:
        hooks: dict[str, Any] = {}
        if predictions is not None:
            require_rows(task, recipe.task.name)
            writer = RowWriter(task, stack.enter_context(staged_file(predictions)))
            hooks = {"on_split": writer.start, "on_batch": writer.batch}
        result = evaluate_split(task, model, recipe, artifacts, split=split, data_dir=data_dir, progress=progress,
                                key=split_key, **hooks)
    return task, {"run_dir": str(run_dir), "split": result.split, **result.metrics}


def predict_run(run_dir: Path, inputs: Sequence[str], *, batch_size: int = 64,
                nbest: int = 1) -> tuple[Task, Iterator[Any]]:
    """The task's predictions for `inputs` (files or text, as the task reads them), streamed in batches, with the
    model placed and cast as for evaluation. `nbest` > 1: the task's n best answers per input, for a task that
    gives them (`Task.supports_nbest`)."""
    recipe, task, _, artifacts, model = load_trained(run_dir)
    if nbest > 1 and not task.supports_nbest:
        raise UserError(f"--nbest {nbest}: task '{recipe.task.name}' gives one prediction per input (n-best lists "
                        f"are a tagger's K best tag sequences); use --nbest 1, or --json for the top classes")
    task.predict_options = {**getattr(task, "predict_options", {}), "nbest": nbest}
    task.setup_data(recipe.data, splits=(), seed=recipe.seed, artifacts=artifacts)
    accelerator = make_accelerator(recipe, trackers=False, warn=False)
    model = accelerator.prepare_model(model, evaluation_mode=True)
    model.eval()
    return task, task.predict(model, inputs, batch_size=batch_size, device=accelerator.device)
