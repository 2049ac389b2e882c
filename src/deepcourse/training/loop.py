"""The one training loop every task shares, on HuggingFace Accelerate.

Read `fit` top to bottom: build the run's pieces, open (or resume) its run directory, then `train`: for each epoch
the training steps, an evaluation, best-model selection, early stopping and a checkpoint. Tasks only supply
`training_step` / `evaluation_step`; devices, mixed precision, accumulation, clipping, schedules, checkpoints and
logs live here and in the modules named after them, once. The hot path waits for the device only where a comment
says "host sync".
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from deepcourse import discovery
from deepcourse.errors import NonFiniteLoss, RecipeError
from deepcourse.metrics import scalars
from deepcourse.recipe.schema import HOLDOUT, Recipe
from deepcourse.rundir import files, lock
from deepcourse.rundir.layout import new_run_dir, remove_unstarted, run_info
from deepcourse.training import progress
from deepcourse.training.accelerator import effective_settings, make_accelerator, torch_threads
from deepcourse.training.averaging import averaged_weights
from deepcourse.training.build import Trained, build_run, count_parameters, monitor_of, steps_per_evaluation
from deepcourse.training.callbacks import TrainContext, TrainState
from deepcourse.training.checkpoint import (
    latest_checkpoint,
    read_best_metrics,
    save_best,
    save_checkpoint,
    unwrapped,
)
from deepcourse.training.collective import on_main
from deepcourse.training.estimate import start_lines
from deepcourse.training.evaluation import evaluation_due, evaluation_loop, score_holdout
from deepcourse.training.meter import LossMeter, TrainMetrics
from deepcourse.training.mlflow_store import check_mlflow_store
from deepcourse.training.resume import Resume, continue_run, read_resume
from deepcourse.training.sampling import EpochSampler
from deepcourse.training.stopping import (
    Interrupted,
    StopRequest,
    agreed,
    all_finite,
    any_process,
    check_due,
    patience_exhausted,
    record_evaluation,
    stop_while_starting,
)
from deepcourse.training.tracking import RunLog, start_trackers

logger = logging.getLogger(__name__)


@dataclass
class Fitted:
    """What `fit` returns: summary.json's content, and the trained model with its recipe, task, facts and artifacts
    as training left them (its last weights, or best/'s once the holdout was scored), for a report made at once."""

    summary: dict[str, Any]
    trained: Trained


def fit(recipe: Recipe, *, runs_root: Path = Path("runs"), run_dir: Path | None = None,
        resume: Path | Resume | None = None) -> Fitted:
    """Train `recipe`, or continue the run in `resume`: its folder (read by `read_resume`, which refuses a recipe
    that computes otherwise than the run's), or what `read_resume` read of it (whose recipe is `recipe`). The
    caller's torch thread count is left as it was."""
    with torch_threads(recipe.train.threads), ExitStack() as held:  # held: what the run holds until it returns
        return _fit(recipe, Path(runs_root), Path(run_dir) if run_dir else None, resume, held)


def _fit(recipe: Recipe, runs_root: Path, run_dir: Path | None, resume: Path | Resume | None,
         held: ExitStack) -> Fitted:
    started = time.perf_counter()
    if resume is not None and not isinstance(resume, Resume):  # a folder: read as `run --resume` reads it
        folder = Path(resume)
        resume = on_main(lambda: read_resume(folder, recipe))
    acc = make_accelerator(recipe)
    on_main(lambda: check_mlflow_store(recipe, resume.run_dir if isinstance(resume, Resume) else None))
    set_seed(recipe.seed, deterministic=recipe.train.deterministic)

    # 1. task, data, model, optimizer, loaders, schedule: every user error surfaces here, before a run directory
    run = build_run(recipe, acc, artifacts=resume.artifacts if resume else None, resuming=resume is not None)
    first_lines = start_lines(run, acc, resumed=resume is not None)  # precision; estimate (a few timed steps, undone)

    # 2. the run directory: a new one (created once, by the main process) or the one being resumed. From here until
    # training ends a stop request (Ctrl-C, SIGTERM) is a flag the run answers (`stop_while_starting`, `train`)
    with StopRequest() as stop:
        if resume is None:
            made = on_main(lambda: [str(p) if p else None for p in new_run_dir(runs_root, recipe.name, run_dir)])
            assert made[0] is not None  # new_run_dir always names the run's folder
            out_dir, created = Path(made[0]), Path(made[1]) if made[1] else None
        else:
            out_dir, created = resume.run_dir, None
        if acc.is_main_process:  # one writer per run directory, until fit returns
            held.enter_context(lock.acquire(out_dir))
        task = run.task
        # build_run with an accelerator builds every piece of a run
        assert task is not None and run.optimizer is not None and run.bundle is not None
        assert run.train_loader is not None and run.sampler is not None
        ctx = TrainContext(acc, recipe, task, run.model, run.optimizer, run.scheduler, TrainState(), out_dir,
                           run.bundle, RunLog(None), LossMeter(acc.device), run.steps_per_epoch, run.total_steps,
                           run.callbacks, train_metrics=TrainMetrics(task.create_train_metrics(), task.pad_index),
                           started=started, average=run.average)
        try:
            if resume is not None:
                continue_run(ctx, resume)
                ctx.started = started - ctx.state.elapsed_s  # the wall time counts the segments before this one
            else:
                on_main(lambda: start_run_dir(ctx, first_lines))
            start_trackers(acc, recipe, out_dir, runs_root)
            if acc.is_main_process:
                ctx.log = RunLog(out_dir / "metrics.jsonl", acc)
            stop_while_starting(acc, stop, out_dir, resumed=resume is not None, removed=created is not None)

            # 3. training
            stop.starting = False
            train(ctx, run.train_loader, run.sampler, run.eval_loader, stop)
        except BaseException:
            if resume is None and acc.is_main_process:  # kept only once it has a checkpoint (or best weights)
                remove_unstarted(out_dir, created)
            raise
        finally:
            ctx.log.close()
    scored = score_holdout(ctx, run.holdout_loader) if run.holdout_loader is not None else None

    # 4. the summary, and the trained model for a report (unwrapped: no distributed or compiled wrapper; it still
    # computes in the recipe's mixed precision, as Accelerate prepared it)
    monitor = monitor_of(recipe, task)[0]
    summary = {"run_dir": str(out_dir), "epochs": ctx.state.epoch, "steps": ctx.state.global_step,
               "monitor": monitor, "headline": list(task.headline_metrics(monitor)),
               "best": read_best_metrics(out_dir) if acc.is_main_process else {},
               "wall_time_s": round(ctx.elapsed(), 2), "num_parameters": count_parameters(ctx.model)}
    if scored is not None:
        summary[HOLDOUT] = scored
    if acc.is_main_process:
        files.write_json(out_dir / "summary.json", summary)
    return Fitted(summary, Trained(recipe, task, run.facts, run.artifacts, unwrapped(acc, ctx.model)))


def start_run_dir(ctx: TrainContext, first_lines: Mapping[str, Any]) -> None:
    """checkpoints/, the resolved recipe, the artifacts and run.json (with `start_lines`') of a new run (main)."""
    out_dir, recipe = ctx.run_dir, ctx.recipe
    (out_dir / "checkpoints").mkdir(parents=True)
    files.atomic_write_text(out_dir / "recipe.toml", recipe.to_toml())
    files.write_json(out_dir / "artifacts.json", ctx.bundle.artifacts)
    info = run_info(recipe.seed, [{"name": p.name, "dist": p.dist, "version": p.version, "status": p.status}
                                  for p in discovery.plugins()],
                    {"num_processes": ctx.accelerator.num_processes, "device": str(ctx.accelerator.device),
                     **effective_settings(recipe, warn=False).as_record(ctx.model), **first_lines,
                     "num_parameters": count_parameters(ctx.model)})
    files.write_json(out_dir / "run.json", info)


def checkpoint(ctx: TrainContext) -> Path:
    """Save the run's state (`save_checkpoint`; a host sync), after folding the kept training outputs into the
    metrics' sums and bringing the loop state's process count and wall time up to date."""
    ctx.train_metrics.fold(ctx.accelerator)  # gathers across processes
    ctx.checkpointed = time.perf_counter()
    ctx.state.num_processes, ctx.state.elapsed_s = ctx.accelerator.num_processes, round(ctx.elapsed(), 3)
    return save_checkpoint(ctx.run_dir / "checkpoints", ctx.accelerator, model=ctx.model, optimizer=ctx.optimizer,
                           scheduler=ctx.scheduler, state=ctx.state, loss=ctx.loss, train_metrics=ctx.train_metrics,
                           keep=ctx.recipe.train.keep_checkpoints, average=ctx.average)


# -- the loop -----------------------------------------------------------------------------------------------------
def train(ctx: TrainContext, train_loader: DataLoader, sampler: EpochSampler, eval_loader: DataLoader | None,
          stop: StopRequest) -> None:
    state, cfg = ctx.state, ctx.recipe.train
    for cb in ctx.callbacks:
        cb.on_train_start(ctx)
    while state.epoch < cfg.epochs and not state.done:
        epoch, epoch_start = state.epoch, time.perf_counter()
        hit_max_steps = train_epoch(ctx, train_loader, sampler, stop)
        epoch_loss = log_epoch_loss(ctx, time.perf_counter() - epoch_start)

        metrics: dict[str, Any] = {}
        last_epoch = hit_max_steps or epoch + 1 >= cfg.epochs
        if eval_loader is not None and evaluation_due(ctx, epoch, last_epoch):
            metrics = evaluate_epoch(ctx, eval_loader, stop)
        elif eval_loader is None and last_epoch:  # host sync: the weights are copied off the device
            save_best(ctx, {"train_loss": epoch_loss} if epoch_loss is not None else {})

        if ctx.is_main:
            print_epoch(ctx, epoch, epoch_loss, metrics, time.perf_counter() - epoch_start)
        for cb in ctx.callbacks:
            cb.on_epoch_end(ctx)
        state.epoch += 1
        state.step_in_epoch = 0
        state.done = state.done or hit_max_steps
        if state.done or state.epoch >= cfg.epochs or (cfg.checkpoint_epochs and state.epoch % cfg.checkpoint_epochs
                                                       == 0):
            checkpoint(ctx)  # host sync (see `checkpoint`)
    for cb in ctx.callbacks:
        cb.on_train_end(ctx)


def train_epoch(ctx: TrainContext, train_loader: DataLoader, sampler: EpochSampler, stop: StopRequest) -> bool:
    """The optimizer steps of one epoch (from where a resumed run stopped); True when train.max_steps is reached."""
    acc, task, model, optimizer, state = ctx.accelerator, ctx.task, ctx.model, ctx.optimizer, ctx.state
    cfg, accum = ctx.recipe.train, acc.gradient_accumulation_steps
    l1_params = [p for p in model.parameters() if p.requires_grad and p.ndim > 1] if cfg.l1 else []
    step_scheduler = not steps_per_evaluation(ctx.scheduler)
    model.train()
    batches: Any = train_loader  # Accelerate's loader (set_epoch), or its skip loader on resume
    if state.step_in_epoch:
        batches = acc.skip_first_batches(train_loader, state.step_in_epoch * accum)
    # Accelerate's loaders re-set the sampler's epoch from their own iteration counter when iterated (a fresh skip
    # loader counts from 0), so tell the loader which epoch this is; and the sampler itself, which Accelerate
    # cannot reach through a skip loader over a sharded batch sampler.
    batches.set_epoch(state.epoch)
    sampler.set_epoch(state.epoch)
    task.set_epoch(state.epoch)  # for augmentation that depends on the epoch (alternating flips)
    bar = progress.bar(total=ctx.steps_per_epoch, initial=state.step_in_epoch, leave=False, dynamic_ncols=True,
                       desc=f"epoch {state.epoch + 1}/{cfg.epochs}", show=cfg.progress and ctx.is_main)
    tick = Tick()
    try:
        if state.step_in_epoch >= ctx.steps_per_epoch:
            return False
        for batch in batches:
            # -- one batch: forward, backward, and (every grad_accum batches) an optimizer step ---------------------
            with acc.accumulate(model):
                loss, outputs = split_step(task.training_step(model, batch))
                if cfg.l1:
                    loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
                finite = not cfg.skip_nonfinite or all_finite(acc, loss)  # skip_nonfinite: all-reduce + host sync
                if finite:
                    acc.backward(loss)  # several processes: the gradients' all-reduce, on the device
                    if acc.sync_gradients and (cfg.clip_grad_norm or log_due(ctx, state.global_step + 1)):
                        tick.grad_norm = acc.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm or math.inf)
                    optimizer.step()  # fp16: the gradient scaler reads whether a gradient overflowed (host sync)
                else:
                    state.skipped_steps += 1
                optimizer.zero_grad(set_to_none=True)
            if finite:
                ctx.loss.add(loss)  # a tensor addition, on the device
                ctx.train_metrics.add(outputs)  # kept on the device until the next fold
            if not acc.sync_gradients:
                continue
            if step_scheduler and not acc.optimizer_step_was_skipped:
                ctx.scheduler.step()
            state.step_in_epoch += 1
            state.global_step += 1
            tick.steps += 1
            bar.update(1)

            # -- logging, checkpoints and stop requests at step boundaries --------------------------------------
            mean_loss = log_train_step(ctx, tick, bar) if log_due(ctx, state.global_step) else None
            for cb in ctx.callbacks:
                cb.on_step_end(ctx, mean_loss)
            # every train.stop_check_every steps (with several processes): an all-reduce and a host sync
            due = check_due(acc, state.global_step, cfg.stop_check_every)
            stopping = due and agreed(acc, stop)
            timed = bool(cfg.checkpoint_minutes) and due and any_process(  # (another all-reduce, when asked for)
                acc, time.perf_counter() - ctx.checkpointed >= 60 * (cfg.checkpoint_minutes or 0))
            if stopping or timed or (cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0):
                saved = checkpoint(ctx)
                if stopping:
                    raise Interrupted(saved, stop.signum)
            if cfg.max_steps and state.global_step >= cfg.max_steps:
                return True
        return False
    finally:
        bar.close()


def split_step(result: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor] | None]:
    """The one reading of what `Task.training_step` returns: the loss, or (loss, per-sample outputs for the
    training metrics). Anything else is named here, not left to fail further on."""
    if isinstance(result, torch.Tensor):
        return result, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor) and \
            (result[1] is None or isinstance(result[1], Mapping)):
        return result[0], result[1]
    shape = f"a tuple of {len(result)}" if isinstance(result, tuple) else type(result).__name__
    raise TypeError(f"training_step must return the loss (a tensor) or (loss, dict of per-sample outputs); it "
                    f"returned {shape}")


def log_due(ctx: TrainContext, step: int) -> bool:
    """Whether optimizer step `step` (1-based) logs: every train.log_every, and the epoch's last."""
    in_epoch = ctx.state.step_in_epoch + (step - ctx.state.global_step)
    return step % ctx.recipe.train.log_every == 0 or in_epoch == ctx.steps_per_epoch


class Tick:
    """Steps and time since the last logged step, for the throughput figure, and the last gradient norm measured."""

    def __init__(self) -> None:
        self.steps, self.start = 0, time.perf_counter()
        self.grad_norm: torch.Tensor | None = None

    def rate(self, samples_per_step: int) -> float:
        now = time.perf_counter()
        rate = self.steps * samples_per_step / max(now - self.start, 1e-9)
        self.steps, self.start = 0, now
        return rate


def log_train_step(ctx: TrainContext, tick: Tick, bar: Any) -> float:
    """Log the mean loss since the last log (over all processes), the training metrics so far this epoch, the
    learning rate, the gradient norm of this step (before clipping) and the throughput."""
    acc = ctx.accelerator
    mean_loss = float(acc.reduce(ctx.loss.log_mean(), reduction="mean"))  # all-reduce + host sync
    if not math.isfinite(mean_loss):
        raise_nonfinite(ctx, mean_loss)
    ctx.train_metrics.fold(acc)  # gathers the kept outputs; the metrics' values are read on the host
    rate = tick.rate(acc.gradient_accumulation_steps * ctx.recipe.data.batch_size * acc.num_processes)
    lr = ctx.optimizer.param_groups[0]["lr"]
    grad_norm = {"grad_norm": float(tick.grad_norm)} if tick.grad_norm is not None else {}  # host sync
    log(ctx, {"split": "train", "scope": "step", "loss": mean_loss, **ctx.train_metrics.values(), "lr": lr,
              **grad_norm, "samples_per_s": round(rate, 1)})
    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", **{"samples/s": f"{rate:,.0f}"})
    ctx.loss.reset_log()
    tick.grad_norm = None
    return mean_loss


def log_epoch_loss(ctx: TrainContext, seconds: float) -> float | None:
    """Log the epoch's mean training loss and training metrics (None when no step was trained, e.g. resumed at an
    epoch's end)."""
    local = ctx.loss.epoch_mean()
    if local is None:
        return None
    epoch_loss = float(ctx.accelerator.reduce(local, reduction="mean"))  # all-reduce + host sync
    ctx.train_metrics.fold(ctx.accelerator)  # gathers the kept outputs; the metrics' values are read on the host
    log(ctx, {"split": "train", "scope": "epoch", "loss": epoch_loss, **ctx.train_metrics.values(),
              "seconds": round(seconds, 3)})
    ctx.loss.reset_epoch()  # logged: a resume during this epoch's evaluation must not log it twice
    ctx.train_metrics.reset()
    return epoch_loss


def evaluate_epoch(ctx: TrainContext, eval_loader: DataLoader, stop: StopRequest) -> dict[str, Any]:
    """Evaluate, log, then pick the best model, step a plateau schedule and count early-stopping patience."""
    recipe, state = ctx.recipe, ctx.state
    # each batch's outputs gathered across processes; the metrics computed on the host at the end (host sync)
    with averaged_weights(ctx.average):  # train.average: the average is evaluated (and best/ saved from it)
        metrics = evaluation_loop(ctx.accelerator, ctx.task, ctx.model, eval_loader, sharded=True, stop=stop,
                                  stop_check_every=recipe.train.stop_check_every, desc=f"eval {recipe.eval.split}",
                                  progress=recipe.train.progress)
    if agreed(ctx.accelerator, stop):  # all-reduce + host sync
        raise Interrupted(checkpoint(ctx), stop.signum)
    state.evaluated_epoch = state.epoch
    log(ctx, {"split": recipe.eval.split, "scope": "epoch", **scalars(metrics)})
    for cb in ctx.callbacks:
        cb.on_evaluate(ctx, metrics)
    monitor, mode = monitor_of(recipe, ctx.task)
    if monitor not in metrics:
        raise RecipeError(f"train.monitor: task '{recipe.task.name}' computes no metric '{monitor}'. "
                          f"It computes: {', '.join(scalars(metrics))}")
    value = metrics[monitor]
    if steps_per_evaluation(ctx.scheduler):
        ctx.scheduler.step(value)
    if record_evaluation(state, value, state.epoch, mode=mode, train=recipe.train):
        save_best(ctx, scalars(metrics))  # host sync: the weights are copied off the device
    if patience_exhausted(state, recipe.train):
        state.done = True
        if ctx.is_main:
            logger.info(f"deepcourse: early stopping after epoch {state.epoch + 1}: {monitor} has not improved for "
                     f"{state.bad_evals} evaluation(s) (best {state.best_value:.4f} at epoch "
                     f"{(state.best_epoch or 0) + 1})")
    return metrics


def log(ctx: TrainContext, values: dict[str, Any]) -> None:
    ctx.state.event += 1
    ctx.log.write({"event": ctx.state.event, "epoch": ctx.state.epoch + 1, "step": ctx.state.global_step, **values})


def raise_nonfinite(ctx: TrainContext, value: float) -> None:
    last = latest_checkpoint(ctx.run_dir / "checkpoints")
    raise NonFiniteLoss(
        f"the training loss became {value} by step {ctx.state.global_step} (epoch {ctx.state.epoch + 1}); "
        f"stopped without saving this state. Last good checkpoint: {last or 'none'}. Lower optimizer.lr, set "
        f"train.clip_grad_norm, or set train.skip_nonfinite = true to skip such steps")


def print_epoch(ctx: TrainContext, epoch: int, loss: float | None, metrics: Mapping[str, Any],
                seconds: float) -> None:
    parts = [f"epoch {epoch + 1}/{ctx.recipe.train.epochs}"]
    if loss is not None:
        parts.append(f"train loss {loss:.4f}")
    shown = {k: v for k, v in scalars(metrics).items() if k != "num_samples"}
    if shown:
        parts.append(f"{ctx.recipe.eval.split} " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    parts.append(f"({seconds:.1f} s)")
    logger.info("  ".join(parts))
