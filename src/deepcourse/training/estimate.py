"""How long a run will take, measured before it starts: "about N min on this machine".

A FLOP count cannot say it (a CPU in bf16, a loaded machine, a data pipeline on the host), so the probe times the real
thing: one warm-up training step, then a few timed ones on the run's own model, data, device and precision, and one
evaluation batch, and extrapolates over the recipe's steps and evaluations. It runs before the run directory exists
(`deepcourse check --estimate` stops there), on batches of its own loader, and puts back what it changed (weights,
normalisation statistics, optimizer and gradient-scaler state, random number generators), so a run with the probe
trains exactly as one without it.
"""
from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch.utils.data import RandomSampler

from deepcourse.recipe.schema import Recipe
from deepcourse.recipe.shipped import shipped
from deepcourse.training.build import RunPieces, make_loader
from deepcourse.training.evaluation import evaluations_planned
from deepcourse.training.precision import describe

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

#: timed training steps after the warm-up one (fewer when they take longer than PROBE_SECONDS together)
PROBE_STEPS = 3
PROBE_SECONDS = 15.0
#: train.estimate unset: new runs of more optimizer steps than this are estimated (shorter ones would spend a
#: noticeable part of their time on it)
AUTO_MIN_STEPS = 200
#: on a CPU, an estimate above this names the task's faster shipped recipe for the dataset (Task.faster_recipes)
HINT_AFTER_S = 3600.0


@dataclass(frozen=True)
class Estimate:
    """The measured times and what they were multiplied by."""

    seconds: float
    step_s: float
    steps: int
    batches: int  # training batches per process: steps x grad_accum
    eval_batch_s: float
    evaluations: int
    eval_batches: int  # per evaluation
    holdout_batches: int

    def as_record(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        evaluations = (f", {self.evaluations} evaluation(s) of {self.eval_batches} batches at "
                       f"{self.eval_batch_s:.3g} s" if self.evaluations else "")
        holdout = f", holdout {self.holdout_batches} batches" if self.holdout_batches else ""
        return (f"deepcourse: estimate: about {duration(self.seconds)} on this machine ({self.batches:,} training "
                f"batches at {self.step_s:.3g} s{evaluations}{holdout}; measured before training)")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def wanted(recipe: Recipe, total_steps: int, *, resumed: bool) -> bool:
    """train.estimate, or unset: new runs of more than AUTO_MIN_STEPS optimizer steps."""
    if recipe.train.estimate is not None:
        return recipe.train.estimate
    return not resumed and total_steps > AUTO_MIN_STEPS


def start_lines(run: RunPieces, accelerator: Accelerator, *, resumed: bool) -> dict[str, Any]:
    """The run's first lines (its precision; its estimate when `wanted`), for every process to call (the probe's
    steps may all-reduce); what run.json records of them."""
    from deepcourse.training.accelerator import effective_settings

    precision = effective_settings(run.recipe, warn=False).precision
    if accelerator.is_main_process and precision is not None:
        log.info(describe(precision, run.model))
    if not wanted(run.recipe, run.total_steps, resumed=resumed):
        return {}
    estimate = probe(run, accelerator)
    if accelerator.is_main_process:
        for line in lines(run, accelerator, estimate):
            log.info(line)
    return {"estimate": estimate.as_record()}


def lines(run: RunPieces, accelerator: Accelerator, estimate: Estimate) -> list[str]:
    """The estimate, and on a CPU past HINT_AFTER_S the task's faster shipped recipe for the dataset, if any."""
    found = [estimate.line()]
    faster = getattr(run.task, "faster_recipes", {}).get(run.recipe.data.name)
    if accelerator.device.type == "cpu" and estimate.seconds > HINT_AFTER_S and faster and \
            faster != run.recipe.name and faster in shipped():
        found.append(f"deepcourse: that is over {duration(HINT_AFTER_S)} on this CPU; `deepcourse run {faster}` is "
                     f"a shipped recipe for {run.recipe.data.name} made to train much faster here")
    return found


def probe(run: RunPieces, accelerator: Accelerator) -> Estimate:
    """Time the run's training steps and one evaluation batch, and extrapolate; the run's state is put back."""
    recipe = run.recipe
    assert run.bundle is not None and run.optimizer is not None and run.task is not None
    accum = accelerator.gradient_accumulation_steps
    with preserved(run, accelerator):
        step_s = time_training(run, accelerator)
        evaluated = run.bundle.splits.get(recipe.eval.split)
        eval_s = time_evaluation(run, accelerator, evaluated) if run.eval_loader is not None else 0.0
    evaluations = evaluations_planned(recipe, run.steps_per_epoch, run.total_steps) if run.eval_loader else 0
    eval_batches = len(run.eval_loader) if run.eval_loader is not None else 0
    holdout_batches = len(run.holdout_loader) if run.holdout_loader is not None else 0
    batches = run.total_steps * accum
    seconds = batches * step_s + (evaluations * eval_batches + holdout_batches) * eval_s
    return Estimate(seconds, step_s, run.total_steps, batches, eval_s, evaluations, eval_batches, holdout_batches)


def _batches(run: RunPieces, accelerator: Accelerator, dataset: Any, batch_size: int) -> Iterator[Any]:
    """Batches of `dataset` on the run's device, drawn in an order of the probe's own (no global random state is
    used), again from the start when it runs out."""
    assert run.bundle is not None
    while True:
        order = RandomSampler(dataset, generator=torch.Generator().manual_seed(run.recipe.seed))
        loader = make_loader(dataset, batch_size, collate_fn=run.bundle.collate_fn, num_workers=0, sampler=order)
        for batch in loader:
            yield send_to_device(batch, accelerator.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(run: RunPieces, accelerator: Accelerator) -> float:
    """Seconds per training batch (forward, backward, optimizer step), after one warm-up batch."""
    assert run.bundle is not None and run.optimizer is not None and run.task is not None
    task, model, optimizer, cfg = run.task, run.model, run.optimizer, run.recipe.train
    batches = _batches(run, accelerator, run.bundle.splits["train"], run.recipe.data.batch_size)
    model.train()
    timed, start = 0, 0.0
    for index, batch in enumerate(batches):
        if index == 1:  # after the warm-up step (allocations, kernel selection, compilation)
            _sync(accelerator.device)
            start = time.perf_counter()
        result = task.training_step(model, batch)
        loss = result[0] if isinstance(result, tuple) else result
        accelerator.backward(loss)
        if cfg.clip_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 1:
            timed += 1
            _sync(accelerator.device)
            if timed >= PROBE_STEPS or time.perf_counter() - start > PROBE_SECONDS:
                break
    return (time.perf_counter() - start) / max(timed, 1)


def time_evaluation(run: RunPieces, accelerator: Accelerator, dataset: Any) -> float:
    """Seconds of one evaluation batch (the training steps warmed the kernels up; an evaluation batch of a large
    model on a CPU can take a minute, so one is all it times)."""
    assert run.task is not None
    batch = next(_batches(run, accelerator, dataset, run.recipe.eval_batch_size))
    run.model.eval()
    with torch.no_grad():
        _sync(accelerator.device)
        start = time.perf_counter()
        run.task.evaluation_step(run.model, batch)
        _sync(accelerator.device)
    return time.perf_counter() - start


@contextmanager
def preserved(run: RunPieces, accelerator: Accelerator) -> Iterator[None]:
    """Put back, afterwards, all the probe's steps change: the weights and buffers (normalisation statistics), the
    optimizer's state and settings, the gradient scaler's, the random number generators, the model's mode."""
    model, optimizer = run.model, run.optimizer
    assert optimizer is not None
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state(),
           torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
    training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            model.load_state_dict(weights)
        optimizer.zero_grad(set_to_none=True)
        optimizer.load_state_dict(optimizer_state)
        if scaler is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(scaler)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])
        np.random.set_state(rng[2])
        if rng[3] is not None:
            torch.cuda.set_rng_state_all(rng[3])
        model.train(training)


def estimate_recipe(recipe: Recipe) -> tuple[Estimate, list[str]]:
    """`deepcourse check --estimate`: the lines a run of `recipe` would start with, measured here, without training
    it and without a run directory. A recipe that cannot run raises the run's own user error."""
    from accelerate.utils import set_seed

    from deepcourse.training.accelerator import effective_settings, make_accelerator, torch_threads
    from deepcourse.training.build import build_run

    with torch_threads(recipe.train.threads):
        accelerator = make_accelerator(recipe, trackers=False)
        set_seed(recipe.seed, deterministic=recipe.train.deterministic)
        run = build_run(recipe, accelerator)
        precision = effective_settings(recipe, warn=False).precision
        found = [describe(precision, run.model)] if precision is not None else []
        estimate = probe(run, accelerator)
        return estimate, found + lines(run, accelerator, estimate)
