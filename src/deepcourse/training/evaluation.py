"""Evaluation: one loop for the evaluation during training, `deepcourse evaluate`, and the tasks' report figures.

During training the loop runs over each process's shard of the split and gathers the outputs, every sample counted
once. From a finished run (`evaluate_split`), one process runs the whole split with the model placed and cast as
Accelerate prepares it for the recipe (device, mixed precision), so `deepcourse evaluate`, `deepcourse.evaluate()`
and a task's report figures compute the same numbers from the same batches.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader

from deepcourse.data import random_subset, require_data_dir
from deepcourse.errors import CheckpointError, DataError, MissingSplitError
from deepcourse.recipe.schema import HOLDOUT, Recipe
from deepcourse.rundir import files
from deepcourse.task import DataBundle, Task
from deepcourse.training.accelerator import make_accelerator
from deepcourse.training.build import make_loader
from deepcourse.training.callbacks import TrainContext
from deepcourse.training.checkpoint import best_folder, load_best_weights
from deepcourse.training.collective import on_main
from deepcourse.training.progress import bar
from deepcourse.training.stopping import StopRequest, agreed, check_due

log = logging.getLogger(__name__)

#: `on_batch(batch, outputs)`: called after each evaluation batch, both on the evaluation device
BatchHook = Callable[[Any, dict[str, torch.Tensor]], None]


def evaluation_loop(accelerator: Accelerator, task: Task, model: torch.nn.Module, batches: Iterable[Any], *,
                    sharded: bool, stop: StopRequest | None = None, stop_check_every: int = 10,
                    on_batch: BatchHook | None = None, desc: str = "eval", progress: bool = True) -> dict[str, Any]:
    """The task's metrics over `batches`. `sharded`: each process holds a shard of a prepared loader (the same
    number of batches everywhere), so outputs are padded and gathered across processes; otherwise this process
    sees every batch and moves it itself. With `stop`, a stop request ends the loop early, in every process at the
    same batch; the caller checks `stop` again afterwards."""
    model.eval()
    metrics = task.create_metrics()
    metrics.reset()
    seen = 0
    show = progress and accelerator.is_main_process
    with torch.no_grad():
        for index, batch in enumerate(bar(batches, desc=desc, leave=False, show=show, dynamic_ncols=True)):
            if not sharded:
                batch = send_to_device(batch, accelerator.device, non_blocking=True)
            outputs = task.evaluation_step(model, batch)
            if sharded:
                if accelerator.num_processes > 1:
                    outputs = accelerator.pad_across_processes(outputs, dim=1, pad_index=task.pad_index)
                outputs = accelerator.gather_for_metrics(outputs)
            seen += len(next(iter(outputs.values())))
            metrics.update(outputs)
            if on_batch is not None:
                on_batch(batch, outputs)
            if stop is not None and check_due(accelerator, index + 1, stop_check_every) and \
                    agreed(accelerator, stop):
                break
    return {**metrics.compute(), "num_samples": seen}


# -- when a run evaluates -----------------------------------------------------------------------------------------
def cut_short(recipe: Recipe, steps_per_epoch: int, total_steps: int) -> bool:
    """Whether train.max_steps ends the run before train.epochs are done (a smoke run, or a step budget)."""
    return total_steps < steps_per_epoch * recipe.train.epochs


def due(recipe: Recipe, epoch: int, *, last: bool, cut: bool) -> bool:
    """Whether the run evaluates after `epoch` (0-based): after its last epoch always; before, every eval.every
    epochs, unless eval.every is "end", or the run is `cut` short by train.max_steps and eval.every is left at its
    default (a smoke run evaluates once, at the end; an eval.every the recipe or --set gives is kept)."""
    every = recipe.eval.every
    if cut and "every" not in recipe.eval.model_fields_set:
        return last
    return last or (every != "end" and (epoch + 1) % every == 0)


def evaluation_due(ctx: TrainContext, epoch: int, last: bool) -> bool:
    """`due` for the run in `ctx`."""
    return due(ctx.recipe, epoch, last=last, cut=cut_short(ctx.recipe, ctx.steps_per_epoch, ctx.total_steps))


def evaluations_planned(recipe: Recipe, steps_per_epoch: int, total_steps: int) -> int:
    """How many evaluations a run of `total_steps` makes (early stopping aside)."""
    epochs = max(1, -(-total_steps // max(steps_per_epoch, 1)))
    cut = cut_short(recipe, steps_per_epoch, total_steps)
    return sum(due(recipe, epoch, last=epoch == epochs - 1, cut=cut) for epoch in range(epochs))


def load_split(task: Task, recipe: Recipe, artifacts: Mapping[str, Any], split: str, *,
               data_dir: str | Path | None = None, key: str = "eval.split") -> DataBundle:
    """One split of a trained run's dataset, as `deepcourse evaluate` loads it: with the run's artifacts (no
    training data needed unless validation is carved from train), cut to `data.eval_samples`. `data_dir` may
    hold only that split's files; `key` is what named the split (`--split test`), for the message when it is
    missing."""
    if data_dir:
        require_data_dir(data_dir, "--data-dir")
    elif recipe.data.data_dir:  # the folder the run was trained from, perhaps on another machine
        require_data_dir(recipe.data.data_dir, hint="Give the folder that holds the split with --data-dir DIR")
    data = recipe.data.model_copy(update={"data_dir": str(data_dir)}) if data_dir else recipe.data
    try:
        bundle = task.setup_data(data, splits=(split,), seed=recipe.data_seed, artifacts=artifacts)
    except MissingSplitError as exc:
        raise exc.named(key) from None
    if split not in bundle.splits:
        raise DataError(f"{key}: dataset '{recipe.data.name}' has no split '{split}' here "
                        f"(available: {', '.join(bundle.splits) or 'none'})")
    if len(bundle.splits[split]) == 0:
        raise DataError(f"{key}: dataset '{recipe.data.name}' has no samples in split '{split}' here")
    # the holdout is always scored whole; a smoke run's own split as the run evaluated it (Recipe.eval_samples)
    size = None if split == HOLDOUT else recipe.eval_samples if split == recipe.eval.split else recipe.data.eval_samples
    bundle.splits = {split: random_subset(bundle.splits[split], size, recipe.data_seed)}
    return bundle


@dataclass
class SplitEvaluation:
    """What `evaluate_split` measured: the split's name, its samples in order, and the task's metrics."""

    split: str
    data: Any
    metrics: dict[str, Any]


def evaluate_split(task: Task, model: torch.nn.Module, recipe: Recipe, artifacts: Mapping[str, Any], *,
                   split: str | None = None, data_dir: str | Path | None = None, on_batch: BatchHook | None = None,
                   progress: bool = False, key: str | None = None,
                   on_split: Callable[[Any], None] | None = None) -> SplitEvaluation:
    """Evaluate a trained model on a split (default: the recipe's `eval.split`) exactly as `deepcourse evaluate`
    does: the same data (`load_split`), batches (the recipe's evaluation batch size, in order), device and mixed
    precision (Accelerate's own casting of the model), and the task's metrics. `on_batch(batch, outputs)` sees
    each batch's evaluation outputs, for figures that need more than the metrics (a confusion matrix, examples);
    `on_split(data)` sees the split's samples before the first batch (to name the samples the batches hold: the
    batches come in the split's order).

    Raises a DataError naming the split, and `key` (what chose it: default `eval.split`, or `split` when one is
    given), when its data is not on this machine."""
    key = key or ("split" if split else "eval.split")
    split = split or recipe.eval.split
    bundle = load_split(task, recipe, artifacts, split, data_dir=data_dir, key=key)
    if on_split is not None:
        on_split(bundle.splits[split])
    accelerator = make_accelerator(recipe, trackers=False, warn=False)
    model = accelerator.prepare_model(model, evaluation_mode=True)  # device and autocast, no distributed wrapper
    loader = make_loader(bundle.splits[split], recipe.eval_batch_size, collate_fn=bundle.collate_fn,
                         num_workers=recipe.data.num_workers)
    metrics = evaluation_loop(accelerator, task, model, loader, sharded=False, on_batch=on_batch,
                              desc=f"eval {split}", progress=progress)
    return SplitEvaluation(split, bundle.splits[split], metrics)


# -- the holdout score ----------------------------------------------------------------------------------------------
# The holdout score: the selected model on data it was never trained or selected on, once, at the end of a run.
#
# Validation picks the epoch (early stopping, best/) and the recipe (sweeps, studies), so its score is optimistic for
# unseen data. `data.holdout` keeps the tail of train out (whole documents where the dataset marks them, the same for
# every seed and candidate); the run scores best/'s weights on it when training ends and writes RUN/holdout.json. Only
# the score is recorded: nothing in the loop reads it, so nothing can select on it.
FILE = "holdout.json"


def score_holdout(ctx: TrainContext, loader: DataLoader) -> dict[str, Any] | None:
    """The task's metrics of best/'s weights on the holdout (a prepared loader), written to RUN/holdout.json; None
    when the run has no best weights (it never evaluated)."""
    has_best = on_main(lambda: _has_best(ctx))
    if not has_best:
        return None
    load_best_weights(ctx)
    metrics = evaluation_loop(ctx.accelerator, ctx.task, ctx.model, loader, sharded=True, desc=HOLDOUT,
                              progress=ctx.recipe.train.progress)
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool, list, dict))}
    record = {"split": HOLDOUT, "epoch": files.read_json(best_folder(ctx.run_dir) / "metrics.json").get("epoch")
              if ctx.is_main else None, **metrics}
    if ctx.is_main:
        files.write_json(ctx.run_dir / FILE, record)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        log.info(f"deepcourse: holdout ({metrics.get('num_samples')} samples, never trained or selected on): {shown}")
    return record


def _has_best(ctx: TrainContext) -> bool:
    try:
        best_folder(ctx.run_dir)
    except CheckpointError:  # no evaluation finished
        return False
    return True
