"""Building a run's pieces from its recipe: the task, its data, the loaders, optimizer, schedule and callbacks.

`build_run` builds them, in one order, for training, the learning-rate range test, inference and the report's
replay of the schedule. Each builder is a registered function or class called with the recipe table's keys
(validated against its signature) plus what the run provides (`params`, `total_steps`, ...), so every user error
surfaces here, before a run directory exists.
"""
from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcourse.data import (
    ArrayDataset,
    passthrough_collate,
    random_subset,
    require_data_dir,
    sample_lengths,
    sized_subset,
)
from deepcourse.errors import MissingSplitError, RecipeError, RecipeWarning, UserError, did_you_mean
from deepcourse.metrics import scalars
from deepcourse.recipe.builders import call_builder, validate_options
from deepcourse.recipe.overrides import flatten
from deepcourse.recipe.schema import HOLDOUT, ModelSection, Recipe
from deepcourse.registry import CALLBACKS, OPTIMIZERS, SCHEDULERS, TASKS
from deepcourse.task import DataBundle, Task
from deepcourse.training.accelerator import effective_settings
from deepcourse.training.averaging import WeightAverage, build_average, require_trained_weights
from deepcourse.training.callbacks import Callback
from deepcourse.training.datainit import init_from_data
from deepcourse.training.ensemble import ENSEMBLE, member_sections
from deepcourse.training.params import FreezeSchedule, freeze, param_groups
from deepcourse.training.precision import to_memory_format
from deepcourse.training.sampling import DeviceBatchSampler, EpochSampler, LengthGroupedSampler
from deepcourse.training.transfer import load_initial

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)


@dataclass
class RunPieces:
    """What `build_run` built; a piece it was not asked for is None (or empty). The model, optimizer and loaders
    are prepared by the run's accelerator when it was given one; the schedule steps the optimizer beneath."""

    recipe: Recipe
    task: Task | None
    model: nn.Module
    facts: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    bundle: DataBundle | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: Any = None
    sampler: EpochSampler | None = None
    train_loader: DataLoader | None = None
    eval_loader: DataLoader | None = None
    holdout_loader: DataLoader | None = None
    callbacks: list[Callback] = field(default_factory=list)
    average: WeightAverage | None = None  # train.average's, also the first of `callbacks`
    steps_per_epoch: int = 0
    total_steps: int = 0


class Trained(NamedTuple):
    """A trained model with what reading it takes: its recipe, its task (set up with the run's artifacts), the
    facts it was built from and the task's artifacts. `fit` hands back its run's; `load_trained` reads a finished
    run's from its files."""

    recipe: Recipe
    task: Task
    facts: dict[str, Any]
    artifacts: dict[str, Any]
    model: nn.Module


def build_run(recipe: Recipe, accelerator: Accelerator | None = None, *, artifacts: Mapping[str, Any] | None = None,
              facts: Mapping[str, Any] | None = None, steps_per_epoch: int | None = None,
              lr_test: bool = False, resuming: bool = False) -> RunPieces:
    """The pieces of a run of `recipe`, built in the order a run reports its user errors: the task, its data, the
    model, the optimizer, the loaders, the schedule, the callbacks. What is built follows from what is given:

    - an `accelerator` (a run): all of them, the data placed and the model, optimizer and loaders prepared by it;
      `artifacts` are a resumed run's (nothing is fitted anew). With `lr_test`, the range test's: the training
      loader alone, in random order, and no schedule, evaluation or callbacks (the test sets the rate itself). A
      new run's model starts from model.init_from (or its builder's weights); a `resuming` one from its checkpoint;
    - `facts` (a trained run's): the task and the model alone, for inference; no data is read;
    - `steps_per_epoch` (a finished run's, from its log): the optimizer and the schedule alone, on a stand-in
      parameter, to replay the learning rate of every step; no task, data or model.
    """
    if steps_per_epoch is not None:
        stand_in = nn.Linear(1, 1)
        optimizer = build_optimizer(recipe, stand_in, groups=False)
        return _with_schedule(RunPieces(recipe, None, stand_in, optimizer=optimizer), optimizer, steps_per_epoch)
    task = build_task(recipe)
    if facts is not None:
        return RunPieces(recipe, task, engine_model(task, recipe, facts), dict(facts))
    if accelerator is None:
        raise ValueError("build_run: a run's data and loaders need its accelerator (or give facts for inference)")
    bundle = load_training_data(task, recipe, artifacts)
    place_data(recipe, bundle, accelerator.device)
    model = engine_model(task, recipe, bundle.facts)
    if not resuming:  # a new run: a resumed one has its weights in its checkpoint
        init_from_data(model, task, bundle, seed=recipe.seed, device=accelerator.device)
        load_initial(model, recipe, main=accelerator.is_main_process)  # over the data's init
    frozen = freeze(recipe, model, num_processes=accelerator.num_processes, main=accelerator.is_main_process)
    require_trained_weights(recipe, model)
    optimizer = build_optimizer(recipe, model)
    train = bundle.splits["train"]
    # the range test draws its batches at random even where the recipe groups them by length: the loss should
    # change with the rate, not with the sentences' lengths (grouped batches of long sentences have many times it)
    sampler = EpochSampler(len(train), seed=recipe.seed) if lr_test else make_train_sampler(recipe, train)
    loader = partial(make_loader, collate_fn=bundle.collate_fn, num_workers=recipe.data.num_workers,
                     pin_memory=accelerator.device.type == "cuda" and not recipe.data.on_device)
    if recipe.data.on_device and accelerator.num_processes == 1 and isinstance(train, ArrayDataset):
        # batches cut on the device from a per-epoch order copied there once: no host work per step
        # (a batch of indices is a tensor here, which ArrayDataset.__getitems__ takes; torch's hint says lists)
        batches = DeviceBatchSampler(sampler, recipe.data.batch_size, train.device, drop_last=recipe.data.drop_last)
        train_loader = DataLoader(train, batch_sampler=batches,  # type: ignore[arg-type]
                                  collate_fn=bundle.collate_fn or passthrough_collate,
                                  generator=torch.Generator().manual_seed(recipe.seed))  # as make_loader's
    else:
        train_loader = loader(train, recipe.data.batch_size, sampler=sampler, seed=recipe.seed,
                              drop_last=recipe.data.drop_last)
    evaluated, holdout = (None, None) if lr_test else (bundle.splits.get(recipe.eval.split), bundle.splits.get(HOLDOUT))
    eval_loader = loader(evaluated, recipe.eval_batch_size) if evaluated is not None and len(evaluated) else None
    holdout_loader = loader(holdout, recipe.eval_batch_size) if holdout is not None else None
    if eval_loader is not None:
        check_monitor(recipe, task)
    prepared_model, prepared_optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    pieces = RunPieces(recipe, task, prepared_model, bundle.facts, bundle.artifacts, bundle, prepared_optimizer,
                       sampler=sampler, train_loader=train_loader,
                       eval_loader=accelerator.prepare(eval_loader) if eval_loader is not None else None,
                       holdout_loader=accelerator.prepare(holdout_loader) if holdout_loader is not None else None)
    if lr_test:
        return pieces
    pieces = _with_schedule(pieces, optimizer, math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps))
    pieces.average = build_average(recipe, accelerator.unwrap_model(prepared_model), pieces.total_steps)
    pieces.callbacks = [*([pieces.average] if pieces.average else []), *build_callbacks(recipe),
                        *([FreezeSchedule(frozen)] if frozen else [])]
    return pieces


def _with_schedule(pieces: RunPieces, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> RunPieces:
    """The schedule of the optimizer (the one beneath Accelerate's wrapper), over train.epochs of `steps_per_epoch`
    optimizer steps, cut at train.max_steps."""
    train = pieces.recipe.train
    total_steps = steps_per_epoch * train.epochs
    if train.max_steps:
        total_steps = min(total_steps, train.max_steps)
    pieces.steps_per_epoch, pieces.total_steps = steps_per_epoch, total_steps
    pieces.scheduler = build_scheduler(pieces.recipe, optimizer, steps_per_epoch, total_steps, pieces.task)
    return pieces


def build_task(recipe: Recipe) -> Task:
    task_cls = TASKS.get(recipe.task.name)
    task = call_builder(task_cls, recipe.task.options, loc="task", provided={})
    eval_fn = getattr(task_cls, "evaluation_options", None)
    if eval_fn is not None:
        kwargs, problems = validate_options(eval_fn, recipe.eval.options, loc="eval", provided={})
        if problems:
            raise RecipeError("invalid [eval] table", problems)
        task.eval_options = kwargs
    return task


def load_training_data(task: Task, recipe: Recipe, artifacts: Mapping[str, Any] | None) -> DataBundle:
    """Train and evaluation splits, cut to `data.train_samples` / `data.eval_samples`. `artifacts` are a resumed
    run's (vocabularies and statistics are not fitted anew)."""
    split = recipe.eval.split
    if recipe.data.data_dir:
        require_data_dir(recipe.data.data_dir)
    splits = ("train", split, *((HOLDOUT,) if recipe.data.holdout else ()))
    try:
        bundle = task.setup_data(recipe.data, splits=splits, seed=recipe.data_seed, artifacts=artifacts)
    except MissingSplitError as exc:
        raise (exc.named("eval.split") if exc.split == split != "train" else exc) from None
    if "train" not in bundle.splits or len(bundle.splits["train"]) == 0:
        raise UserError(f"data: dataset '{recipe.data.name}' has no training samples")
    name = recipe.data.name
    train = bundle.splits["train"] = sized_subset(bundle.splits["train"], recipe.data.train_samples, recipe.data_seed,
                                                  key="data.train_samples", what=f"training samples of '{name}'")
    if recipe.data.batch_size > len(train):  # it trains (one batch an epoch), but not as the recipe says
        subset = " (data.train_samples)" if recipe.data.train_samples else f" of '{name}'"
        warnings.warn(f"data.batch_size = {recipe.data.batch_size} is more than the {len(train)} training samples"
                      f"{subset}: every epoch is one batch of {len(train)}", RecipeWarning, stacklevel=2)
    if split in bundle.splits and recipe.data.eval_samples:
        bundle.splits[split] = sized_subset(bundle.splits[split], recipe.data.eval_samples, recipe.data_seed,
                                            key="data.eval_samples", what=f"samples of '{name}' split '{split}'")
    elif split in bundle.splits:
        bundle.splits[split] = smoke_subset(recipe, bundle.splits[split])
    if recipe.data.holdout and not len(bundle.splits.get(HOLDOUT, ())):
        raise UserError(f"data.holdout: task '{recipe.task.name}' gave no holdout split; its setup_data must pass "
                        f"holdout=data.holdout to resolve_splits (and read splits_to_read(...) of its source)")
    return bundle


def smoke_subset(recipe: Recipe, evaluated: Any) -> Any:
    """The evaluation split of a run train.max_steps cuts: at most as many samples as it trains on
    (Recipe.eval_samples), said in one line, so a smoke run is not spent evaluating."""
    limit = recipe.eval_samples
    if limit is None or limit >= len(evaluated):
        return evaluated
    from accelerate import PartialState

    if PartialState().is_main_process:
        logger.info(f"deepcourse: train.max_steps = {recipe.train.max_steps}: evaluating {limit:,} of the "
                    f"{len(evaluated):,} '{recipe.eval.split}' samples, as many as the run trains on "
                    f"(data.eval_samples sets how many)")
    return random_subset(evaluated, limit, recipe.data_seed)


#: what torch says when a tensor cannot be allocated: the CPU allocator, CUDA, or a size past 64 bits
_NO_MEMORY = re.compile(r"can't allocate memory|out of memory|tried to allocate|size calculation overflowed", re.I)


def build_model(task: Task, model: ModelSection, facts: Mapping[str, Any]) -> nn.Module:
    """The task's model. A layer too large to allocate is a recipe problem: named by its key and size, not left to
    surface as an allocator's traceback."""
    if model.name == ENSEMBLE:  # several trained runs as one model (`deepcourse ensemble`)
        return task.ensemble([build_model(task, member, facts) for member in member_sections(model)])
    try:
        return task.build_model(model, facts)
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and not _NO_MEMORY.search(str(exc)):
            raise
        options = flatten({"model": model.options})
        sizes = sorted(((max(v) if isinstance(v, list) else v, k, v) for k, v in options.items() if _is_size(v)),
                       reverse=True)
        culprit = (f" The largest size in [model] is {sizes[0][1]} = {sizes[0][2]}; lower it." if sizes else
                   " [model] sets no size: lower the model's defaults or use a smaller model.")
        raise RecipeError(f"model: building '{model.name}' needs {_asked_for(str(exc))} than this machine can "
                          f"allocate.{culprit}") from None


def engine_model(task: Task, recipe: Recipe, facts: Mapping[str, Any]) -> nn.Module:
    """The task's model in the memory format the run computes in (train.channels_last, or precision auto's choice),
    for training and inference alike."""
    precision = effective_settings(recipe, warn=False).precision
    model = build_model(task, recipe.model, facts)
    return to_memory_format(model, precision) if precision is not None else model


def _is_size(value: Any) -> bool:
    """A whole number (or a list of them, such as layer widths) that could size a layer."""
    values = value if isinstance(value, list) and value else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values) and max(values) > 1


def _asked_for(message: str) -> str:
    """What an allocator's message says was asked for, as the start of '... than this machine can allocate'."""
    found = re.search(r"allocate (\d+) bytes", message)
    if found:
        size, units = float(found.group(1)), ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"]
        while size >= 1000 and len(units) > 1:
            size, units = size / 1000, units[1:]
        return f"{size:.1f} {units[0]} of memory, more"
    if "overflowed" in message:
        return "a tensor with more elements than 64 bits can count, far more memory"
    found = re.search(r"tried to allocate ([\d.]+ [KMGTP]?i?B)", message, re.I)
    return f"{found.group(1)} of memory, more" if found else "more memory"


def make_loader(dataset: Any, batch_size: int, *, collate_fn: Any, num_workers: int, sampler: Any = None,
                seed: int = 0, pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    """`pin_memory` (training on a GPU): batches in page-locked memory, so the copy to the GPU can overlap the step
    (Accelerate copies with non_blocking=True then)."""
    # A private generator: each new iterator draws a base seed from it, never from the global RNG, so creating
    # an iterator (every epoch, every evaluation, on resume) does not shift dropout or augmentation randomness.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=collate_fn or passthrough_collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed),
                      pin_memory=pin_memory, drop_last=drop_last)


def place_data(recipe: Recipe, bundle: DataBundle, device: torch.device) -> None:
    """data.on_device: move every split's tensors to the training device once, so a batch is cut out there."""
    if not recipe.data.on_device:
        return
    for name, split in bundle.splits.items():
        if not isinstance(split, ArrayDataset):
            raise RecipeError(f"data.on_device: dataset '{recipe.data.name}' keeps its '{name}' split as "
                              f"{type(split).__name__}, not as tensors (ArrayDataset); only tensor datasets can live "
                              f"on the device. Remove the key")
        if recipe.data.num_workers:
            raise RecipeError("data.on_device: a dataset on the device is cut into batches in the training process; "
                              "set data.num_workers = 0")
        bundle.splits[name] = split.to(device)


def make_train_sampler(recipe: Recipe, dataset: Any) -> EpochSampler:
    if not recipe.data.group_by_length:
        return EpochSampler(len(dataset), seed=recipe.seed)
    lengths = sample_lengths(dataset)
    if lengths is None:
        raise RecipeError(f"data.group_by_length: dataset '{recipe.data.name}' gives no per-sample lengths "
                          f"(a `lengths` attribute), so there is nothing to group by; it helps variable-length "
                          f"data such as sentences. Remove the key or set it to false")
    return LengthGroupedSampler(lengths, recipe.data.batch_size, seed=recipe.seed)


def build_optimizer(recipe: Recipe, model: torch.nn.Module, *, groups: bool = True) -> torch.optim.Optimizer:
    """The optimizer of the trainable parameters, in optimizer.groups' groups (`groups`: False for a stand-in
    model, whose names no pattern is about)."""
    builder = OPTIMIZERS.get(recipe.optimizer.name)
    params = param_groups(recipe, model, builder) if groups else [p for p in model.parameters() if p.requires_grad]
    return call_builder(builder, recipe.optimizer.options, loc="optimizer", provided={"params": params})


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int, total_steps: int,
                    task: Task | None = None) -> Any:
    return call_builder(SCHEDULERS.get(recipe.scheduler.name), recipe.scheduler.options, loc="scheduler",
                        provided={"optimizer": optimizer, "steps_per_epoch": steps_per_epoch,
                                  "total_steps": total_steps, "epochs": recipe.train.epochs,
                                  "monitor_mode": monitor_of(recipe, task)[1]})


def build_callbacks(recipe: Recipe) -> list[Callback]:
    return [call_builder(CALLBACKS.get(cb["name"]), {k: v for k, v in cb.items() if k != "name"},
                         loc=f"train.callbacks[{i}]", provided={})
            for i, cb in enumerate(recipe.train.callbacks)]


def steps_per_evaluation(scheduler: Any) -> bool:
    """A schedule stepped with the monitored value after each evaluation (plateau), not after each step."""
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def monitor_of(recipe: Recipe, task: Task | None = None) -> tuple[str, str]:
    """(metric, 'min' or 'max') that picks the best evaluation: the recipe's train.monitor / train.monitor_mode, else
    the task's. Both are read from the task's class without building one (a study needs them before any run);
    only a task whose metric depends on its options (a property, such as a multi-head tagger's) is built for it."""
    task_cls = TASKS.get(recipe.task.name)
    mode = recipe.train.monitor_mode or (task if task is not None else task_cls).monitor_mode
    if recipe.train.monitor:
        return recipe.train.monitor, mode
    declared = task.monitor if task is not None else getattr(task_cls, "monitor", None)
    return (declared if isinstance(declared, str) else build_task(recipe).monitor), mode


def check_monitor(recipe: Recipe, task: Task) -> None:
    """Fail before training (and before a run directory exists) when train.monitor names no metric."""
    monitor = monitor_of(recipe, task)[0]
    try:
        known = scalars(task.create_metrics().compute())  # metrics of no samples: the names are what matter
    except Exception:  # noqa: BLE001 - a metric that cannot compute on nothing: checked after the first evaluation
        return
    if monitor not in known:
        raise RecipeError(f"train.monitor: task '{recipe.task.name}' computes no metric '{monitor}'."
                          f"{did_you_mean(monitor, known)} It computes: {', '.join(known)}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
