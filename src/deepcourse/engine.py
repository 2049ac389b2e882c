"""The one training loop every task shares, on HuggingFace Accelerate.

Read `fit` top to bottom: set-up, resume, then for each epoch the training steps, evaluation, best-model
selection, early stopping and a checkpoint. Tasks only supply `training_step` / `evaluation_step`; devices,
mixed precision, accumulation, clipping, schedules, checkpoints and logs live here, once.
"""
from __future__ import annotations

import functools
import math
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .allocator import keep_freed_memory
from .builders import call_builder, validate_options
from .callbacks import Callback
from .data import EpochSampler, LengthGroupedSampler, passthrough_collate, random_subset, sample_lengths
from .errors import CheckpointError, RecipeError, UserError
from .metrics import scalars
from .recipe import Recipe
from .registry import CALLBACKS, OPTIMIZERS, SCHEDULERS, TASKS
from .rundir import MetricsLog, new_run_dir, remove_unstarted, run_info, truncate_metrics
from .task import DataBundle, Task


class Interrupted(Exception):
    """Ctrl-C: a checkpoint was written and the command exits 130."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted; state saved in {checkpoint}" if checkpoint else "interrupted")
        self.checkpoint = checkpoint


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly where it stopped."""

    epoch: int = 0  # epoch being trained (0-based)
    step_in_epoch: int = 0  # optimizer steps done in this epoch
    global_step: int = 0
    event: int = 0  # number of metrics.jsonl events written, to cut the log back on resume
    best_value: float | None = None
    best_epoch: int | None = None
    bad_evals: int = 0
    evaluated_epoch: int = -1
    done: bool = False
    num_processes: int = 1
    skipped_steps: int = 0
    running_sum: float = 0.0  # training-loss sums not yet logged (this process)
    running_n: int = 0
    epoch_sum: float = 0.0
    epoch_n: int = 0


@dataclass
class TrainContext:
    """What callbacks and helpers see of a running fit."""

    accelerator: Accelerator
    recipe: Recipe
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainState
    run_dir: Path
    bundle: DataBundle
    log: MetricsLog
    steps_per_epoch: int = 0
    total_steps: int = 0
    callbacks: list[Callback] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


# -- building blocks --------------------------------------------------------------------------------------------
def warn_single_cpu_launch() -> None:
    """`accelerate launch --cpu --num_processes N` starts ONE process unless mpirun is configured (accelerate
    issue #2741). Its only trace is MASTER_ADDR without a WORLD_SIZE: say so instead of silently running 1."""
    import os
    import sys

    env = os.environ
    if env.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_ADDR" in env and "WORLD_SIZE" not in env \
            and "PMI_SIZE" not in env and "OMPI_COMM_WORLD_SIZE" not in env:
        print("deepcourse: warning: `accelerate launch --cpu --num_processes N` started a single process (accelerate "
              "needs mpirun for several CPU processes). For N CPU processes use `accelerate launch --multi_gpu "
              "--num_processes N -m deepcourse ...` on a machine without GPUs (or with CUDA_VISIBLE_DEVICES=), or "
              "`torchrun --nproc_per_node N -m deepcourse ...`", file=sys.stderr, flush=True)


def remember_lomo_probe() -> None:
    """Accelerate (1.15) asks `is_lomo_available()` twice in every `AcceleratedOptimizer.step`, and each answer walks
    sys.path through importlib: 0.3-0.4 ms with a few editable installs, 5% of a small CNN's CPU step
    (benchmarks/loop_overhead.py). The answer cannot change within a process, so remember it."""
    import accelerate.optimizer as accelerate_optimizer

    probe = getattr(accelerate_optimizer, "is_lomo_available", None)
    if probe is not None and not hasattr(probe, "cache_info"):
        accelerate_optimizer.is_lomo_available = functools.cache(probe)


def forget_other_precision(mixed_precision: str) -> None:
    """Accelerate keeps one process-wide state and refuses a second Accelerator with another mixed precision. Runs
    made one after another in one process (a notebook, a sweep, the tests) each choose their own, so let go of the
    old precision; the process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    shared = getattr(AcceleratorState, "_shared_state", None)
    if shared and str(shared.get("_mixed_precision", mixed_precision)) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def make_accelerator(recipe: Recipe) -> Accelerator:
    warn_single_cpu_launch()
    remember_lomo_probe()
    if recipe.train.keep_freed_memory:
        keep_freed_memory()
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    trackers = list(recipe.train.trackers)
    if "tensorboard" in trackers:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise RecipeError("train.trackers: 'tensorboard' needs the tensorboard package "
                              "(pip install tensorboard)") from None
    # With no accelerator present, say cpu=True: only then does Accelerate join a multi-process launch with gloo
    # (cpu=False silently gives each process a private, non-distributed run).
    has_accelerator = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and
                                                    torch.backends.mps.is_available())
    cpu = recipe.train.device == "cpu" or not has_accelerator
    forget_other_precision(recipe.train.mixed_precision)
    return Accelerator(cpu=cpu, mixed_precision=recipe.train.mixed_precision,
                       gradient_accumulation_steps=recipe.train.grad_accum, rng_types=[])


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


def make_loader(dataset: Any, batch_size: int, *, collate_fn: Any, num_workers: int,
                sampler: Any = None, seed: int = 0) -> DataLoader:
    # A private generator: each new iterator draws a base seed from it, never from the global RNG, so creating
    # an iterator (every epoch, every evaluation, on resume) does not shift dropout or augmentation randomness.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=collate_fn or passthrough_collate, num_workers=num_workers,
                      persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))


def make_train_sampler(recipe: Recipe, dataset: Any) -> EpochSampler:
    if not recipe.data.group_by_length:
        return EpochSampler(len(dataset), seed=recipe.seed)
    lengths = sample_lengths(dataset)
    if lengths is None:
        raise RecipeError(f"data.group_by_length: dataset '{recipe.data.name}' gives no per-sample lengths "
                          f"(a `lengths` attribute), so there is nothing to group by; it helps variable-length "
                          f"data such as conll2003. Remove the key or set it to false")
    return LengthGroupedSampler(lengths, recipe.data.batch_size, seed=recipe.seed)


def build_optimizer(recipe: Recipe, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return call_builder(OPTIMIZERS.get(recipe.optimizer.name), recipe.optimizer.options, loc="optimizer",
                        provided={"params": params})


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    total_steps: int) -> Any:
    return call_builder(SCHEDULERS.get(recipe.scheduler.name), recipe.scheduler.options, loc="scheduler",
                        provided={"optimizer": optimizer, "steps_per_epoch": steps_per_epoch,
                                  "total_steps": total_steps, "epochs": recipe.train.epochs})


def is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def evaluate(accelerator: Accelerator, task: Task, model: torch.nn.Module, loader: DataLoader,
             *, stop_flag: Any = None, desc: str = "eval", progress: bool = True) -> dict[str, Any]:
    """Run the task's evaluation over a prepared loader; every sample counted exactly once across processes."""
    from tqdm.auto import tqdm

    model.eval()
    metrics = task.create_metrics()
    metrics.reset()
    seen = 0
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, leave=False, disable=True if not (progress and accelerator.is_main_process) else None,
                          dynamic_ncols=True):
            outputs = task.evaluation_step(model, batch)
            if accelerator.num_processes > 1:
                outputs = accelerator.pad_across_processes(outputs, dim=1, pad_index=task.pad_index)
            gathered = accelerator.gather_for_metrics(outputs)
            seen += len(next(iter(gathered.values())))
            metrics.update(gathered)
            if stop_flag is not None and stop_flag():
                break
    return {**metrics.compute(), "num_samples": seen}


def check_monitor(recipe: Recipe, task: Task) -> None:
    """Fail before training (and before a run directory exists) when train.monitor names no metric."""
    monitor = recipe.train.monitor or task.monitor
    try:
        known = scalars(task.create_metrics().compute())  # metrics of no samples: the names are what matter
    except Exception:  # noqa: BLE001 - a metric that cannot compute on nothing; checked after the first eval
        return
    if monitor not in known:
        from .errors import did_you_mean

        raise RecipeError(f"train.monitor: task '{recipe.task.name}' computes no metric '{monitor}'."
                          f"{did_you_mean(monitor, known)} It computes: {', '.join(known)}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- stop requests (Ctrl-C) ---------------------------------------------------------------------------------------
class StopRequest:
    """First Ctrl-C asks the loop to stop at the next step boundary and save; a second one aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (embedded use): keep the default behaviour
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\ndeepcourse: stopping after this step and saving a checkpoint (Ctrl-C again to abort)",
              flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def agreed(accelerator: Accelerator, flag: bool) -> bool:
    """True if any process says so: all processes must stop at the same step or collectives hang."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


# -- checkpoints --------------------------------------------------------------------------------------------------
def save_checkpoint(ctx: TrainContext) -> Path:
    acc = ctx.accelerator
    folder = ctx.run_dir / "checkpoints"
    name = ckpt.step_dir_name(ctx.state.global_step)
    final, tmp = folder / name, folder / f".tmp-{name}"
    acc.wait_for_everyone()
    if ctx.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    tensors, meta = ckpt.rng_state()
    ckpt.save_tensors(tensors, tmp / f"rng-{acc.process_index}.safetensors")
    ckpt.atomic_write_text(tmp / f"rng-{acc.process_index}.json", _json(meta))
    if ctx.is_main:
        ckpt.save_weights(acc.unwrap_model(ctx.model), tmp / "model.safetensors")
        torch.save(ctx.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(ctx.scheduler.state_dict(), tmp / "scheduler.pt")
        if acc.scaler is not None:
            torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
        ctx.state.num_processes = acc.num_processes
        ckpt.atomic_write_text(tmp / ckpt.STATE_FILE, _json(asdict(ctx.state)))  # written last: marks complete
    acc.wait_for_everyone()
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        ckpt.commit_dir(tmp, final)
        ckpt.prune(folder, ctx.recipe.train.keep_checkpoints)
    acc.wait_for_everyone()
    return final


def load_checkpoint(ctx: TrainContext, folder: Path) -> None:
    acc = ctx.accelerator
    state = ckpt.read_json(folder / ckpt.STATE_FILE)
    if state.get("num_processes", 1) != acc.num_processes:
        raise CheckpointError(f"{folder}: saved by {state.get('num_processes')} process(es); resume it with the "
                              f"same number (now {acc.num_processes}) so the data order and RNG streams match")
    ckpt.load_weights(acc.unwrap_model(ctx.model), folder / "model.safetensors")
    ctx.optimizer.load_state_dict(ckpt.safe_torch_load(folder / "optimizer.pt"))
    ctx.scheduler.load_state_dict(ckpt.safe_torch_load(folder / "scheduler.pt"))
    if acc.scaler is not None and (folder / "scaler.pt").exists():
        acc.scaler.load_state_dict(ckpt.safe_torch_load(folder / "scaler.pt"))
    ckpt.set_rng_state(ckpt.load_tensors(folder / f"rng-{acc.process_index}.safetensors"),
                       ckpt.read_json(folder / f"rng-{acc.process_index}.json"))
    known = set(TrainState.__dataclass_fields__)
    ctx.state = TrainState(**{k: v for k, v in state.items() if k in known})


def save_best(ctx: TrainContext, metrics: Mapping[str, Any]) -> None:
    """best/: weights plus everything evaluate/predict need without the training data."""
    if not ctx.is_main:
        return
    best, tmp = ctx.run_dir / "best", ctx.run_dir / ".tmp-best"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    ckpt.save_weights(ctx.accelerator.unwrap_model(ctx.model), tmp / "model.safetensors")
    save_facts(tmp, ctx.bundle)
    ckpt.atomic_write_text(tmp / "recipe.toml", ctx.recipe.to_toml())
    ckpt.atomic_write_text(tmp / "metrics.json", _json({"epoch": ctx.state.epoch + 1, "step": ctx.state.global_step,
                                                           **metrics}))
    ctx.task.save_extra(tmp)
    ckpt.commit_dir(tmp, best)


def save_facts(folder: Path, bundle: DataBundle) -> None:
    tensors = {k: v for k, v in bundle.facts.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in bundle.facts.items() if not isinstance(v, torch.Tensor)}
    ckpt.atomic_write_text(folder / "facts.json", _json(plain))
    if tensors:
        ckpt.save_tensors(tensors, folder / "facts.safetensors")
    ckpt.atomic_write_text(folder / "artifacts.json", _json(bundle.artifacts))


def load_facts(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    facts = ckpt.read_json(folder / "facts.json")
    if (folder / "facts.safetensors").exists():
        facts.update(ckpt.load_tensors(folder / "facts.safetensors"))
    return facts, ckpt.read_json(folder / "artifacts.json")


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=1, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


# -- the loop -----------------------------------------------------------------------------------------------------
def fit(recipe: Recipe, *, runs_root: Path = Path("runs"), run_dir: Path | None = None,
        resume: Path | None = None) -> dict[str, Any]:
    """Train `recipe`; returns a summary with the run directory and the best metrics."""
    started = time.perf_counter()
    accelerator = make_accelerator(recipe)
    set_seed(recipe.seed, deterministic=recipe.train.deterministic)
    is_main = accelerator.is_main_process

    # 1. task, data, model, optimizer: every user error surfaces here, before a run directory exists
    task = build_task(recipe)
    eval_split = recipe.eval.split
    artifacts = ckpt.read_json(resume / "artifacts.json") if resume and (resume / "artifacts.json").exists() \
        else None
    bundle = task.setup_data(recipe.data, splits=("train", eval_split), seed=recipe.seed, artifacts=artifacts)
    if "train" not in bundle.splits or len(bundle.splits["train"]) == 0:
        raise UserError(f"data: dataset '{recipe.data.name}' has no training samples")
    bundle.splits["train"] = random_subset(bundle.splits["train"], recipe.data.train_samples, recipe.seed)
    if eval_split in bundle.splits:
        bundle.splits[eval_split] = random_subset(bundle.splits[eval_split], recipe.data.eval_samples, recipe.seed)
    model = task.build_model(recipe.model, bundle.facts)
    optimizer = build_optimizer(recipe, model)
    collate = bundle.collate_fn
    train_sampler = make_train_sampler(recipe, bundle.splits["train"])
    train_loader = make_loader(bundle.splits["train"], recipe.data.batch_size, collate_fn=collate,
                               num_workers=recipe.data.num_workers, sampler=train_sampler, seed=recipe.seed)
    eval_loader = None
    if eval_split in bundle.splits and len(bundle.splits[eval_split]):
        eval_loader = make_loader(bundle.splits[eval_split], recipe.eval_batch_size, collate_fn=collate,
                                  num_workers=recipe.data.num_workers)
    if eval_loader is not None:
        check_monitor(recipe, task)
    raw_optimizer = optimizer
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    steps_per_epoch = math.ceil(len(train_loader) / recipe.train.grad_accum)
    total_steps = steps_per_epoch * recipe.train.epochs
    if recipe.train.max_steps:
        total_steps = min(total_steps, recipe.train.max_steps)
    scheduler = build_scheduler(recipe, raw_optimizer, steps_per_epoch, total_steps)
    callbacks = [call_builder(CALLBACKS.get(cb["name"]), {k: v for k, v in cb.items() if k != "name"},
                              loc=f"train.callbacks[{i}]", provided={})
                 for i, cb in enumerate(recipe.train.callbacks)]

    # 2. the run directory: a new one (named once, by the main process) or the one being resumed
    if resume is None:
        chosen = [new_run_dir(runs_root, recipe.name, run_dir) if is_main else None]
        broadcast_object_list(chosen)
        out_dir = Path(chosen[0])
    else:
        out_dir = resume
    ctx = TrainContext(accelerator, recipe, task, model, optimizer, scheduler, TrainState(), out_dir, bundle,
                       MetricsLog(None), steps_per_epoch, total_steps, callbacks)
    if resume is not None:
        latest = ckpt.latest_checkpoint(out_dir / "checkpoints")
        if latest is None:
            raise CheckpointError(f"--resume {out_dir}: no complete checkpoint in {out_dir / 'checkpoints'}; "
                                  f"start a new run instead")
        load_checkpoint(ctx, latest)
        if is_main:
            truncate_metrics(out_dir / "metrics.jsonl", ctx.state.global_step, ctx.state.event)
            print(f"deepcourse: resuming {out_dir} from {latest.name} (epoch {ctx.state.epoch + 1}, "
                  f"step {ctx.state.global_step})", flush=True)
    elif is_main:
        (out_dir / "checkpoints").mkdir(parents=True)
        ckpt.atomic_write_text(out_dir / "recipe.toml", recipe.to_toml())
        ckpt.atomic_write_text(out_dir / "artifacts.json", _json(bundle.artifacts))
        from . import plugins
        info = run_info(recipe.seed, [{"name": p.name, "dist": p.dist, "version": p.version, "status": p.status}
                                      for p in plugins.plugins()],
                        {"num_processes": accelerator.num_processes, "device": str(accelerator.device),
                         "mixed_precision": recipe.train.mixed_precision,
                         "num_parameters": count_parameters(model)})
        ckpt.atomic_write_text(out_dir / "run.json", _json(info))
    accelerator.wait_for_everyone()
    if is_main:
        ctx.log = MetricsLog(out_dir / "metrics.jsonl", tensorboard_dir=out_dir / "tensorboard"
                             if "tensorboard" in recipe.train.trackers else None)

    try:
        with StopRequest() as stop:
            _train(ctx, train_loader, train_sampler, eval_loader, stop)
    except BaseException:
        if resume is None and is_main and ctx.state.global_step == 0:
            remove_unstarted(out_dir)
        raise
    finally:
        ctx.log.close()

    summary = {"run_dir": str(out_dir), "epochs": ctx.state.epoch, "steps": ctx.state.global_step,
               "best": _read_best(out_dir), "wall_time_s": round(time.perf_counter() - started, 2),
               "num_parameters": count_parameters(model)}
    if is_main:
        ckpt.atomic_write_text(out_dir / "summary.json", _json(summary))
    return summary


def _train(ctx: TrainContext, train_loader: DataLoader, sampler: EpochSampler, eval_loader: DataLoader | None,
           stop: StopRequest) -> None:
    acc, recipe, task, model, optimizer, state = (ctx.accelerator, ctx.recipe, ctx.task, ctx.model,
                                                  ctx.optimizer, ctx.state)
    cfg = recipe.train
    from tqdm.auto import tqdm

    l1_params = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1] if cfg.l1 else []
    monitor = cfg.monitor or task.monitor
    mode = cfg.monitor_mode or task.monitor_mode
    batch_size = recipe.data.batch_size * acc.num_processes
    for cb in ctx.callbacks:
        cb.on_train_start(ctx)

    while state.epoch < cfg.epochs and not state.done:
        epoch = state.epoch
        model.train()
        batches = train_loader
        if state.step_in_epoch:
            batches = acc.skip_first_batches(train_loader, state.step_in_epoch * cfg.grad_accum)
        # Accelerate's loaders re-set the sampler's epoch from their own iteration counter when iterated (a
        # fresh skip loader counts from 0), so tell the loader we iterate which epoch this is; and the sampler
        # itself, which Accelerate cannot reach through a skip loader over a sharded batch sampler.
        batches.set_epoch(epoch)
        sampler.set_epoch(epoch)
        bar = tqdm(total=ctx.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=True if not (cfg.progress and ctx.is_main) else None, dynamic_ncols=True,
                   leave=False)
        # loss sums since the last log and over the epoch; restored on resume so the logs match an unbroken run
        running = torch.tensor(state.running_sum, device=acc.device)
        epoch_sum = torch.tensor(state.epoch_sum, device=acc.device)
        running_n, epoch_n, tick, tick_steps = state.running_n, state.epoch_n, time.perf_counter(), 0

        def keep_sums() -> None:
            """Put the un-logged loss sums into the state a checkpoint is about to save."""
            state.running_sum, state.running_n = float(running), running_n
            state.epoch_sum, state.epoch_n = float(epoch_sum), epoch_n
        epoch_start = time.perf_counter()
        hit_max_steps = False

        if state.step_in_epoch < ctx.steps_per_epoch:
            for batch in batches:
                # -- one batch: forward, backward, and (every grad_accum batches) an optimizer step ---------------
                with acc.accumulate(model):
                    loss = task.training_step(model, batch)
                    if cfg.l1:
                        loss = loss + cfg.l1 * sum(p.abs().sum() for p in l1_params)
                    finite = True
                    if cfg.skip_nonfinite:
                        finite = bool(torch.isfinite(loss).all())
                    if finite:
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.clip_grad_norm:
                            acc.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                        optimizer.step()
                    else:
                        state.skipped_steps += 1
                    optimizer.zero_grad(set_to_none=True)
                if finite:
                    running += loss.detach()
                    running_n += 1
                    epoch_sum += loss.detach()
                    epoch_n += 1
                if not acc.sync_gradients:
                    continue
                if not acc.optimizer_step_was_skipped and not is_plateau(ctx.scheduler):
                    ctx.scheduler.step()
                state.step_in_epoch += 1
                state.global_step += 1
                tick_steps += 1
                bar.update(1)

                # -- logging, checkpoints and stop requests at step boundaries ----------------------------------
                if state.global_step % cfg.log_every == 0 or state.step_in_epoch == ctx.steps_per_epoch:
                    mean_loss = float(acc.reduce(running / max(running_n, 1), reduction="mean"))
                    if not math.isfinite(mean_loss):
                        _nonfinite(ctx, mean_loss)
                    now = time.perf_counter()
                    rate = tick_steps * cfg.grad_accum * batch_size / max(now - tick, 1e-9)
                    lr = optimizer.param_groups[0]["lr"]
                    _log(ctx, {"split": "train", "scope": "step", "loss": mean_loss, "lr": lr, "samples_per_s": round(rate, 1)})
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", **{"samples/s": f"{rate:,.0f}"})
                    running.zero_()
                    running_n, tick, tick_steps = 0, now, 0
                else:
                    mean_loss = None
                for cb in ctx.callbacks:
                    cb.on_step_end(ctx, mean_loss)
                stopping = agreed(acc, stop.requested)
                if stopping or (cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0):
                    keep_sums()
                    saved = save_checkpoint(ctx)
                    if stopping:
                        bar.close()
                        raise Interrupted(saved)
                if cfg.max_steps and state.global_step >= cfg.max_steps:
                    hit_max_steps = True
                    break
        bar.close()
        epoch_loss = float(acc.reduce(epoch_sum / epoch_n, reduction="mean")) if epoch_n else None
        if epoch_loss is not None:
            _log(ctx, {"split": "train", "scope": "epoch", "loss": epoch_loss,
                       "seconds": round(time.perf_counter() - epoch_start, 3)})
            epoch_sum.zero_()  # logged: a resume during this epoch's evaluation must not log it twice
            epoch_n = 0

        # -- evaluation, best model, early stopping -----------------------------------------------------------
        metrics: dict[str, Any] = {}
        last_epoch = hit_max_steps or epoch + 1 >= cfg.epochs
        if eval_loader is not None and ((epoch + 1) % recipe.eval.every == 0 or last_epoch):
            metrics = evaluate(acc, task, model, eval_loader, stop_flag=lambda: stop.requested,
                               desc=f"eval {recipe.eval.split}", progress=cfg.progress)
            if agreed(acc, stop.requested):
                keep_sums()
                raise Interrupted(save_checkpoint(ctx))
            state.evaluated_epoch = epoch
            _log(ctx, {"split": recipe.eval.split, "scope": "epoch", **scalars(metrics)})
            for cb in ctx.callbacks:
                cb.on_evaluate(ctx, metrics)
            if monitor not in metrics:
                raise RecipeError(f"train.monitor: task '{recipe.task.name}' computes no metric '{monitor}'. "
                                  f"It computes: {', '.join(scalars(metrics))}")
            value = metrics[monitor]
            if is_plateau(ctx.scheduler):
                if getattr(ctx.scheduler, "auto_mode", False):
                    ctx.scheduler.mode = mode
                    ctx.scheduler._init_is_better(mode=mode, threshold=ctx.scheduler.threshold,
                                                  threshold_mode=ctx.scheduler.threshold_mode)
                ctx.scheduler.step(value)
            min_delta = cfg.early_stopping.min_delta if cfg.early_stopping else 0.0
            better = state.best_value is None or (value > state.best_value + min_delta if mode == "max"
                                                  else value < state.best_value - min_delta)
            if better:
                state.best_value, state.best_epoch, state.bad_evals = float(value), epoch, 0
                save_best(ctx, scalars(metrics))
            else:
                state.bad_evals += 1
            if cfg.early_stopping and state.bad_evals >= cfg.early_stopping.patience:
                state.done = True
                if ctx.is_main:
                    print(f"deepcourse: early stopping after epoch {epoch + 1}: {monitor} has not improved for "
                          f"{state.bad_evals} evaluation(s) (best {state.best_value:.4f} at epoch "
                          f"{(state.best_epoch or 0) + 1})", flush=True)
        elif eval_loader is None and last_epoch:
            save_best(ctx, {"train_loss": epoch_loss} if epoch_loss is not None else {})

        if ctx.is_main:
            _print_epoch(ctx, epoch, epoch_loss, metrics, time.perf_counter() - epoch_start)
        for cb in ctx.callbacks:
            cb.on_epoch_end(ctx)
        state.epoch += 1
        state.step_in_epoch = 0
        state.running_sum, state.running_n, state.epoch_sum, state.epoch_n = 0.0, 0, 0.0, 0
        if hit_max_steps:
            state.done = True
        save_checkpoint(ctx)
    for cb in ctx.callbacks:
        cb.on_train_end(ctx)


def _log(ctx: TrainContext, values: dict[str, Any]) -> None:
    ctx.state.event += 1
    record = {"event": ctx.state.event, "epoch": ctx.state.epoch + 1, "step": ctx.state.global_step, **values}
    ctx.log.write(record)


def _nonfinite(ctx: TrainContext, value: float) -> None:
    last = ckpt.latest_checkpoint(ctx.run_dir / "checkpoints")
    raise NonFiniteLoss(
        f"the training loss became {value} by step {ctx.state.global_step} (epoch {ctx.state.epoch + 1}); "
        f"stopped without saving this state. Last good checkpoint: {last or 'none'}. Lower optimizer.lr, set "
        f"train.clip_grad_norm, or set train.skip_nonfinite = true to skip such steps")


def _print_epoch(ctx: TrainContext, epoch: int, loss: float | None, metrics: Mapping[str, Any],
                 seconds: float) -> None:
    parts = [f"epoch {epoch + 1}/{ctx.recipe.train.epochs}"]
    if loss is not None:
        parts.append(f"train loss {loss:.4f}")
    shown = {k: v for k, v in scalars(metrics).items() if k != "num_samples"}
    if shown:
        parts.append(f"{ctx.recipe.eval.split} " + " ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    parts.append(f"({seconds:.1f} s)")
    print("  ".join(parts), flush=True)


def _read_best(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "best" / "metrics.json"
    return ckpt.read_json(path) if path.exists() else {}


# -- evaluate / predict from a finished run -----------------------------------------------------------------------
def load_trained(run_dir: Path, *, which: str = "best", device: str = "auto") -> tuple[Recipe, Task, Any, Any,
                                                                                         torch.nn.Module]:
    """Rebuild the task and model of a run from its own files (no training data needed)."""
    from .recipe import load_recipe
    from .rundir import require_run_dir

    require_run_dir(run_dir)
    recipe = load_recipe(run_dir / "recipe.toml")
    best = run_dir / "best"
    if not best.is_dir():
        old = run_dir / ".best.old"
        if old.is_dir():
            best = old
        else:
            raise CheckpointError(f"{run_dir}: has no best/ weights yet (the run has not finished an evaluation)")
    facts, artifacts = load_facts(best)
    task = build_task(recipe)
    model = task.build_model(recipe.model, facts)
    weights = best / "model.safetensors"
    if which == "latest":
        latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise CheckpointError(f"{run_dir}: no complete checkpoint")
        weights = latest / "model.safetensors"
    ckpt.load_weights(model, weights)
    return recipe, task, facts, artifacts, model


def evaluate_run(run_dir: Path, *, split: str | None = None, data_dir: str | None = None, which: str = "best",
                 progress: bool = True) -> tuple[Task, dict[str, Any]]:
    """Metrics of a finished run's weights on a split; `data_dir` may hold only that split's files."""
    recipe, task, facts, artifacts, model = load_trained(run_dir, which=which)
    split = split or recipe.eval.split
    data = recipe.data.model_copy(update={"data_dir": data_dir}) if data_dir else recipe.data
    bundle = task.setup_data(data, splits=(split,), seed=recipe.seed, artifacts=artifacts)
    if split not in bundle.splits:
        raise UserError(f"--split {split}: dataset '{recipe.data.name}' has no such split here "
                        f"(available: {', '.join(bundle.splits) or 'none'})")
    accelerator = make_accelerator(recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"trackers": []})}))
    loader = make_loader(bundle.splits[split], recipe.eval_batch_size, collate_fn=bundle.collate_fn,
                         num_workers=recipe.data.num_workers)
    model, loader = accelerator.prepare(model, loader)
    metrics = evaluate(accelerator, task, model, loader, desc=f"eval {split}", progress=progress)
    return task, {"run_dir": str(run_dir), "split": split, **metrics}


def predict_run(run_dir: Path, inputs: Sequence[str], *, batch_size: int = 64) -> Any:
    recipe, task, facts, artifacts, model = load_trained(run_dir)
    task.setup_data(recipe.data, splits=(), seed=recipe.seed, artifacts=artifacts)
    device = torch.device("cuda" if torch.cuda.is_available() and recipe.train.device != "cpu" else "cpu")
    model.to(device).eval()
    return task, task.predict(model, inputs, batch_size=batch_size, device=device)
