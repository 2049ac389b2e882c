"""The checkpoint layout of a run directory: training states under checkpoints/, the best weights under best/.

    checkpoints/step-000001234/   model.safetensors, optimizer.{json,safetensors}, scheduler.{json,safetensors},
                                  [scaler.{json,safetensors}], [average.{json,safetensors}],
                                  rng-<rank>.{json,safetensors} for every process, trainer_state.json (written last)
    best/                         model.safetensors, facts.json [+ facts.safetensors], artifacts.json,
                                  recipe.toml, metrics.json

Each folder is written under a temporary name and renamed into place (`deepcourse.rundir.files.atomic_write`), so only
complete checkpoints are ever listed or resumed from. Only the main process touches the folder: the other processes
send it their random-number states and receive what they resume from (`deepcourse.training.collective`), so a run on
several machines needs no shared filesystem. Nothing in it is a pickle; older runs' optimizer.pt / scheduler.pt /
scaler.pt are still read, with `weights_only=True`.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator

from deepcourse.errors import CheckpointError, DamagedFileError
from deepcourse.rundir import files
from deepcourse.task import DataBundle
from deepcourse.training.averaging import WeightAverage, averaged_weights
from deepcourse.training.callbacks import TrainContext, TrainState
from deepcourse.training.collective import gather_to_all, launched, on_main

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from deepcourse.training.meter import LossMeter, TrainMetrics

STEP_DIR = re.compile(r"^step-(\d{9})$")
STATE_FILE = "trainer_state.json"


# -- listing ------------------------------------------------------------------------------------------------------
def step_dir_name(global_step: int) -> str:
    return f"step-{global_step:09d}"


def complete_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary and half-written ones are never listed)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(folder: Path) -> Path | None:
    found = complete_checkpoints(folder)
    return found[-1] if found else None


def load_latest_intact(ctx: TrainContext, folder: Path, names: Sequence[str]) -> Path:
    """Load the newest of the complete checkpoints `names` (as the resume read listed them, newest first) that reads
    back whole, and return it. A newer one whose files are damaged (cut by a full disk, a copy that stopped half-way)
    is skipped with a warning naming it and renamed `damaged-step-N`, so it is neither resumed from nor kept in place
    of good ones. Problems that are not damage (a planted pickle, another process count) stop the resume: an older
    checkpoint would not make them go away."""
    damaged: list[tuple[Path, DamagedFileError]] = []
    for candidate in [folder / name for name in names]:
        try:
            load_checkpoint(ctx, candidate)
        except DamagedFileError as exc:
            damaged.append((candidate, exc))
            continue
        for bad, problem in damaged if ctx.is_main else ():
            kept = folder / f"damaged-{bad.name}"
            log.warning(f"checkpoint {bad.name} is damaged ({problem}); resuming from {candidate.name} instead, and "
                        f"keeping the damaged one as {kept}")
            bad.rename(kept)
        return candidate
    raise CheckpointError(f"{folder}: no checkpoint reads back whole; start a new run",
                          [f"{bad.name}: {exc}" for bad, exc in damaged])


def prune(folder: Path, keep: int) -> None:
    for old in complete_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in folder.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


# -- training state -----------------------------------------------------------------------------------------------
def unwrapped(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module of a prepared model: no DDP wrapper and no torch.compile wrapper, so saved weights have the
    names of the model a recipe builds, however it was launched."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def save_checkpoint(folder: Path, accelerator: Accelerator, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, state: TrainState, loss: LossMeter,
                    train_metrics: TrainMetrics, keep: int, average: WeightAverage | None = None) -> Path:
    """Write folder/step-<state.global_step>/ and keep the `keep` newest checkpoints; every process calls it (it
    gathers the RNG states), the main process writes. It holds exactly: model.safetensors (the weights of the
    unwrapped model), optimizer.* and scheduler.* (their state dicts), scaler.* (the fp16 gradient scaler's, when
    Accelerate has one), average.* (train.average's state, the averaged tensors and the update count, when the run
    averages), rng-<rank>.* (the random-number states of every process) and, written last,
    trainer_state.json (`state`, with every process's loss-meter sums and the training metrics' sums, which must hold no
    outputs left to fold). Changes none of what it saves; returns the folder."""
    final = folder / step_dir_name(state.global_step)
    generators = gather_to_all(files.rng_state())  # every process's random state, on the main process too
    meters = gather_to_all(loss.state_dict())  # and every process's loss sums: each logs its own mean, then reduces
    if accelerator.is_main_process:
        with files.atomic_write(final, folder=True) as tmp:
            for rank, (tensors, meta) in enumerate(generators):
                files.save_tensors(tensors, tmp / f"rng-{rank}.safetensors")
                files.write_json(tmp / f"rng-{rank}.json", meta)
            files.save_weights(unwrapped(accelerator, model), tmp / "model.safetensors")
            files.save_state(optimizer.state_dict(), tmp / "optimizer")
            files.save_state(scheduler.state_dict(), tmp / "scheduler")
            if accelerator.scaler is not None:
                files.save_state(accelerator.scaler.state_dict(), tmp / "scaler")
            if average is not None:
                files.save_state(average.state_dict(), tmp / "average")
            files.write_json(tmp / STATE_FILE, {**asdict(state), "loss_meter": meters[0], "loss_meters": meters,
                                                "train_metrics": train_metrics.state_dict()})  # written last
        prune(folder, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(ctx: TrainContext, folder: Path) -> None:
    """Restore weights, optimizer, schedule, RNGs, loop state and loss sums from a checkpoint folder. The main
    process reads it; the others get what they need from it."""
    acc = ctx.accelerator
    model = unwrapped(acc, ctx.model)
    saved = on_main(lambda: _read_checkpoint(folder, acc.num_processes, model))
    if not acc.is_main_process:  # the main process checked these bytes already
        _load_weight_bytes(model, saved["weights"])
    ctx.optimizer.load_state_dict(saved["optimizer"])
    ctx.scheduler.load_state_dict(saved["scheduler"])
    if acc.scaler is not None and saved["scaler"] is not None:
        acc.scaler.load_state_dict(saved["scaler"])
    if ctx.average is not None:
        ctx.average.load_state_dict(saved["average"], str(folder))
    files.set_rng_state(*saved["rng"][acc.process_index])
    state = saved["state"]
    per_process = state.get("loss_meters")  # one per process; older checkpoints kept the main process's alone
    own = per_process[acc.process_index] if per_process else state.get("loss_meter")
    ctx.loss.load_state_dict(own or _older_loss_sums(state))
    ctx.train_metrics.load_state_dict(state.get("train_metrics"))
    known = {f.name for f in dataclasses.fields(TrainState)}
    ctx.state = TrainState(**{k: v for k, v in state.items() if k in known})


def _read_checkpoint(folder: Path, num_processes: int, model: torch.nn.Module) -> dict[str, Any]:
    """Everything a resume needs from a checkpoint folder, read (and the weights loaded into `model`) by the main
    process; the weights' bytes too when other processes need them."""
    state = files.read_json(folder / STATE_FILE)
    if state.get("num_processes", 1) != num_processes:
        raise CheckpointError(f"{folder}: saved by {state.get('num_processes')} process(es); resume it with the "
                              f"same number (now {num_processes}) so the data order and RNG streams match")
    files.load_weights(model, folder / "model.safetensors")
    has_scaler = files.has_state(folder / "scaler") or (folder / "scaler.pt").exists()
    rng = [(files.load_tensors(folder / f"rng-{rank}.safetensors"), files.read_json(folder / f"rng-{rank}.json"))
           for rank in range(num_processes)]
    return {"state": state, "optimizer": _read_state(folder, "optimizer"),
            "scheduler": _read_state(folder, "scheduler"),
            "scaler": _read_state(folder, "scaler") if has_scaler else None, "rng": rng,
            "average": files.load_state(folder / "average") if files.has_state(folder / "average") else None,
            "weights": (folder / "model.safetensors").read_bytes() if launched() else None}


def _read_state(folder: Path, name: str) -> Any:
    """A state dict as this version writes it (JSON + safetensors), or as older runs did (a .pt file)."""
    if files.has_state(folder / name):
        return files.load_state(folder / name)
    return files.safe_torch_load(folder / f"{name}.pt")


def _older_loss_sums(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoints of deepcourse 0.1.0 before the loss meter kept the sums among the loop state."""
    return {"log_sum": saved.get("running_sum", 0.0), "log_n": saved.get("running_n", 0),
            "epoch_sum": saved.get("epoch_sum", 0.0), "epoch_n": saved.get("epoch_n", 0)}


# -- best weights -------------------------------------------------------------------------------------------------
def save_best(ctx: TrainContext, metrics: Mapping[str, Any]) -> None:
    """best/: weights (train.average's average, when the run averages) plus everything evaluate/predict need without
    the training data."""
    if not ctx.is_main:
        return
    with files.atomic_write(ctx.run_dir / "best", folder=True) as tmp, averaged_weights(ctx.average):
        files.save_weights(unwrapped(ctx.accelerator, ctx.model), tmp / "model.safetensors")
        save_facts(tmp, ctx.bundle)
        files.atomic_write_text(tmp / "recipe.toml", ctx.recipe.to_toml())
        files.write_json(tmp / "metrics.json", {"epoch": ctx.state.epoch + 1, "step": ctx.state.global_step,
                                                **metrics})
        ctx.task.save_extra(tmp)


def load_best_weights(ctx: TrainContext) -> None:
    """Put best/'s weights into the model of every process (the main process reads them; the others get the bytes,
    as a resume does), e.g. to score the holdout with the model the run selected rather than its last one."""
    model = unwrapped(ctx.accelerator, ctx.model)

    def read() -> bytes | None:
        files.load_weights(model, best_folder(ctx.run_dir) / "model.safetensors")
        return (best_folder(ctx.run_dir) / "model.safetensors").read_bytes() if launched() else None

    data = on_main(read)
    if not ctx.is_main:
        _load_weight_bytes(model, data)  # type: ignore[arg-type]


def _load_weight_bytes(model: torch.nn.Module, data: bytes) -> None:
    """Load a safetensors file's bytes, sent by the main process, into `model` on another process."""
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "model.safetensors"
        weights.write_bytes(data)
        files.load_weights(model, weights)


def save_facts(folder: Path, bundle: DataBundle) -> None:
    tensors = {k: v for k, v in bundle.facts.items() if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in bundle.facts.items() if not isinstance(v, torch.Tensor)}
    files.write_json(folder / "facts.json", plain)
    if tensors:
        files.save_tensors(tensors, folder / "facts.safetensors")
    files.write_json(folder / "artifacts.json", bundle.artifacts)


def best_folder(run_dir: Path) -> Path:
    """best/ of a run (or the previous best/ a crash left mid-replacement)."""
    best = run_dir / "best"
    if best.is_dir():
        return best
    old = run_dir / ".best.old"
    if old.is_dir():
        return old
    raise CheckpointError(f"{run_dir}: has no best/ weights yet (the run has not finished an evaluation)")


def load_facts(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    facts = files.read_json(folder / "facts.json")
    if (folder / "facts.safetensors").exists():
        facts.update(files.load_tensors(folder / "facts.safetensors"))
    return facts, files.read_json(folder / "artifacts.json")


def read_best_metrics(run_dir: Path) -> dict[str, Any]:
    return files.read_json(run_dir / "best" / "metrics.json", missing={})
