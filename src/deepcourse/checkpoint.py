"""The checkpoint layout of a run directory: training states under checkpoints/, the best weights under best/.

    checkpoints/step-000001234/   model.safetensors, optimizer.pt, scheduler.pt, [scaler.pt],
                                  rng-<rank>.safetensors + rng-<rank>.json, trainer_state.json (written last)
    best/                         model.safetensors, facts.json [+ facts.safetensors], artifacts.json,
                                  recipe.toml, metrics.json

Each folder is written under a temporary name and renamed into place (`deepcourse.files.commit_dir`), so only
complete checkpoints are ever listed or resumed from.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from . import files
from .callbacks import TrainContext, TrainState
from .errors import CheckpointError, DamagedFileError
from .task import DataBundle

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


def load_latest_intact(ctx: TrainContext, folder: Path) -> Path:
    """Load the newest complete checkpoint that reads back whole, and return it. A newer one whose files are damaged
    (cut by a full disk, a copy that stopped half-way) is skipped with a warning naming it and renamed
    `damaged-step-N`, so it is neither resumed from nor kept in place of good ones. Problems that are not damage
    (a planted pickle, another process count) stop the resume: an older checkpoint would not make them go away."""
    damaged: list[tuple[Path, DamagedFileError]] = []
    for candidate in reversed(complete_checkpoints(folder)):
        try:
            load_checkpoint(ctx, candidate)
        except DamagedFileError as exc:
            damaged.append((candidate, exc))
            continue
        for bad, exc in damaged:
            kept = folder / f"damaged-{bad.name}"
            print(f"deepcourse: warning: checkpoint {bad.name} is damaged ({exc}); resuming from {candidate.name} "
                  f"instead, and keeping the damaged one as {kept}", file=sys.stderr, flush=True)
            if ctx.is_main:
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
def save_checkpoint(ctx: TrainContext) -> Path:
    """Write the training state of every process into checkpoints/step-N/; returns the folder."""
    acc = ctx.accelerator
    folder = ctx.run_dir / "checkpoints"
    name = step_dir_name(ctx.state.global_step)
    final, tmp = folder / name, folder / f".tmp-{name}"
    acc.wait_for_everyone()
    if ctx.is_main:
        files.fresh_dir(tmp)
    acc.wait_for_everyone()
    tensors, meta = files.rng_state()
    files.save_tensors(tensors, tmp / f"rng-{acc.process_index}.safetensors")
    files.write_json(tmp / f"rng-{acc.process_index}.json", meta)
    if ctx.is_main:
        files.save_weights(acc.unwrap_model(ctx.model), tmp / "model.safetensors")
        torch.save(ctx.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(ctx.scheduler.state_dict(), tmp / "scheduler.pt")
        if acc.scaler is not None:
            torch.save(acc.scaler.state_dict(), tmp / "scaler.pt")
        ctx.state.num_processes = acc.num_processes
        files.write_json(tmp / STATE_FILE, {**asdict(ctx.state), "loss_meter": ctx.loss.state_dict()})  # last
    acc.wait_for_everyone()
    if ctx.is_main:
        if final.exists():
            shutil.rmtree(final)
        files.commit_dir(tmp, final)
        prune(folder, ctx.recipe.train.keep_checkpoints)
    acc.wait_for_everyone()
    return final


def load_checkpoint(ctx: TrainContext, folder: Path) -> None:
    """Restore weights, optimizer, schedule, RNGs, loop state and loss sums from a checkpoint folder."""
    acc = ctx.accelerator
    saved = files.read_json(folder / STATE_FILE)
    if saved.get("num_processes", 1) != acc.num_processes:
        raise CheckpointError(f"{folder}: saved by {saved.get('num_processes')} process(es); resume it with the "
                              f"same number (now {acc.num_processes}) so the data order and RNG streams match")
    files.load_weights(acc.unwrap_model(ctx.model), folder / "model.safetensors")
    ctx.optimizer.load_state_dict(files.safe_torch_load(folder / "optimizer.pt"))
    ctx.scheduler.load_state_dict(files.safe_torch_load(folder / "scheduler.pt"))
    if acc.scaler is not None and (folder / "scaler.pt").exists():
        acc.scaler.load_state_dict(files.safe_torch_load(folder / "scaler.pt"))
    files.set_rng_state(files.load_tensors(folder / f"rng-{acc.process_index}.safetensors"),
                        files.read_json(folder / f"rng-{acc.process_index}.json"))
    ctx.loss.load_state_dict(saved.get("loss_meter") or _older_loss_sums(saved))
    known = {f.name for f in dataclasses.fields(TrainState)}
    ctx.state = TrainState(**{k: v for k, v in saved.items() if k in known})


def _older_loss_sums(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoints of deepcourse 0.1.0 before the loss meter kept the sums among the loop state."""
    return {"log_sum": saved.get("running_sum", 0.0), "log_n": saved.get("running_n", 0),
            "epoch_sum": saved.get("epoch_sum", 0.0), "epoch_n": saved.get("epoch_n", 0)}


# -- best weights -------------------------------------------------------------------------------------------------
def save_best(ctx: TrainContext, metrics: Mapping[str, Any]) -> None:
    """best/: weights plus everything evaluate/predict need without the training data."""
    if not ctx.is_main:
        return
    best = ctx.run_dir / "best"
    tmp = files.fresh_dir(ctx.run_dir / ".tmp-best")
    files.save_weights(ctx.accelerator.unwrap_model(ctx.model), tmp / "model.safetensors")
    save_facts(tmp, ctx.bundle)
    files.atomic_write_text(tmp / "recipe.toml", ctx.recipe.to_toml())
    files.write_json(tmp / "metrics.json", {"epoch": ctx.state.epoch + 1, "step": ctx.state.global_step, **metrics})
    ctx.task.save_extra(tmp)
    files.commit_dir(tmp, best)


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
