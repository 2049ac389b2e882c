"""`deepcourse ensemble RUN RUN ... -o DIR`: several finished runs as one run directory.

The directory is laid out as a trained run's (recipe.toml, run.json, best/, metrics.jsonl, summary.json), so
evaluate, predict, report and compare read it without a special case: its recipe is the first member's with
`[model] name = "ensemble"` listing every member's [model] table, and best/ holds the task's combination of the
members (`Task.ensemble`) with all their weights. The members must agree on everything the combined model reads:
the task, the labels, the vocabularies and statistics fitted on the data (artifacts) and the facts the models were
built from. It is written under a temporary name, evaluated once on the recipe's evaluation split (what the
report draws), then renamed into place: a failure leaves no half-written directory.
"""
from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from deepcourse._version import __version__
from deepcourse.errors import CheckpointError, UserError
from deepcourse.metrics import scalars
from deepcourse.recipe.load import load_recipe
from deepcourse.recipe.schema import Recipe
from deepcourse.results.inference import evaluate_run, load_trained
from deepcourse.rundir.files import atomic_write, atomic_write_text, save_weights, to_json, write_json
from deepcourse.rundir.layout import require_run_dir
from deepcourse.task import DataBundle
from deepcourse.training.build import Trained
from deepcourse.training.checkpoint import save_facts
from deepcourse.training.ensemble import ENSEMBLE

#: the fewest runs an ensemble combines: one run would be a copy of itself
MIN_MEMBERS = 2


def make_ensemble(run_dirs: Sequence[Path], output: Path, *, progress: bool = False) -> dict[str, Any]:
    """Write the ensemble of `run_dirs` to `output` (a new or empty folder) and return its summary, with the
    metrics of the recipe's evaluation split."""
    if len(run_dirs) < MIN_MEMBERS:
        raise UserError(f"ensemble: give at least {MIN_MEMBERS} runs to combine (got {len(run_dirs)}); one run is "
                        f"already its own model")
    require_new_folder(output)
    members = [load_member(path) for path in run_dirs]
    require_agreement(run_dirs, members)
    first = members[0]
    recipe = {**first.recipe.to_dict(), "name": f"{first.recipe.name}_ensemble",
              "description": f"ensemble of {len(members)} runs (averaged by the task): " +
                             ", ".join(str(p) for p in run_dirs),
              "model": {"name": ENSEMBLE, "members": [m.recipe.to_dict()["model"] for m in members]}}
    model = first.task.ensemble([m.model for m in members])
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output, folder=True) as tmp:
        tmp.mkdir(exist_ok=True)
        _write_run(tmp, recipe, model, first, run_dirs)
        _, metrics = evaluate_run(tmp, progress=progress)
        shown = {"split": metrics["split"], **scalars(metrics)}
        write_json(tmp / "best" / "metrics.json", {"epoch": 0, "step": 0, **shown})
        (tmp / "metrics.jsonl").write_text(to_json({"event": 1, "epoch": 0, "step": 0, "scope": "epoch", **shown},
                                                   indent=None) + "\n", encoding="utf-8")
        summary = {"run_dir": str(output), "ensemble_of": [str(p) for p in run_dirs], "best": shown,
                   "num_parameters": sum(p.numel() for p in model.parameters()), "epochs": 0, "steps": 0}
        write_json(tmp / "summary.json", summary)
    return summary


def require_new_folder(output: Path) -> None:
    """-o names a folder that does not exist yet, or an empty one: an ensemble never writes over anything."""
    if output.exists() and not output.is_dir():
        raise UserError(f"-o {output}: is a file, not a folder; choose a new folder for the ensemble")
    if output.is_dir() and any(output.iterdir()):
        raise UserError(f"-o {output}: already exists and is not empty; choose a new folder for the ensemble")


def load_member(path: Path) -> Trained:
    """A finished run's trained model (its best weights): one that has not finished (no summary.json) is refused,
    as its best/ may still change."""
    require_run_dir(path)
    if not (path / "best").is_dir() or not (path / "summary.json").is_file():
        raise CheckpointError(f"{path}: not a finished run (no best/ weights or no summary.json: still training, or "
                              f"stopped before its end); an ensemble combines finished runs")
    trained = load_trained(path)
    recipe = trained.recipe  # the task set up from the run's artifacts, as predict does: its labels are known
    trained.task.setup_data(recipe.data, splits=(), seed=recipe.data_seed, artifacts=trained.artifacts)
    return trained


def require_agreement(paths: Sequence[Path], members: Sequence[Trained]) -> None:
    """Every member reads its inputs and names its answers as the first does: the same task, labels, fitted
    artifacts (vocabularies, class names, statistics) and facts (tensors by shape)."""
    first, problems = members[0], []
    for path, member in zip(paths[1:], members[1:]):
        if member.recipe.task.model_dump() != first.recipe.task.model_dump():
            problems.append(f"{path}: task {member.recipe.task.model_dump()} differs from {paths[0]}'s "
                            f"{first.recipe.task.model_dump()}")
            continue
        labels = [k for k in {*member.task.label_names(), *first.task.label_names()}
                  if member.task.label_names().get(k) != first.task.label_names().get(k)]
        if labels:
            problems.append(f"{path}: its labels of {', '.join(sorted(labels))} differ from {paths[0]}'s")
        keys = differing(member.artifacts, first.artifacts)
        carved = bool(member.recipe.data.val_split or first.recipe.data.val_split) and (
            member.recipe.data_seed != first.recipe.data_seed)
        # even where nothing fitted tells them apart, each member's validation images are some other member's
        # training images: the ensemble's validation score would count images it trained on
        split = (f"its validation split was carved from train with seed {member.recipe.data_seed}, {paths[0]}'s "
                 f"with {first.recipe.data_seed}, so each trained on images the other validates on: train the "
                 f"members with the same data.split_seed (--set data.split_seed=0), so they share one split"
                 if carved else "")
        if keys:
            problems.append(f"{path}: what it fitted on its training data differs from {paths[0]}'s in "
                            f"{', '.join(keys)} (vocabularies, class names or statistics: other data, or other "
                            f"data options)" + (f"; {split}" if split else ""))
        elif split:
            problems.append(f"{path}: {split}")
        keys = differing(_shapes(member.facts), _shapes(first.facts))
        if keys:
            problems.append(f"{path}: the facts its model was built from differ from {paths[0]}'s in "
                            f"{', '.join(keys)}")
    if problems:
        raise UserError("ensemble: the runs cannot be combined; every member must be trained on the same task, "
                        "labels and data", problems)


def differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


def _shapes(facts: Mapping[str, Any]) -> dict[str, Any]:
    """Facts as the model's shape reads them: a tensor (pretrained vectors, drawn per seed for words without one)
    by its shape and type, since the weights loaded over it are the member's own."""
    return {k: (tuple(v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else v for k, v in facts.items()}


def _write_run(folder: Path, recipe: dict[str, Any], model: torch.nn.Module, first: Trained,
               run_dirs: Sequence[Path]) -> None:
    """recipe.toml, run.json and best/ of the ensemble; the recipe is validated by reading it back."""
    atomic_write_text(folder / "recipe.toml", Recipe.model_validate(recipe).to_toml())
    resolved = load_recipe(folder / "recipe.toml")
    write_json(folder / "run.json", {"deepcourse": __version__, "command": sys.argv, "seed": resolved.seed,
                                     "created": _dt.datetime.now().isoformat(timespec="seconds"),
                                     "ensemble_of": [str(p) for p in run_dirs]})
    best = folder / "best"
    best.mkdir()
    save_weights(model, best / "model.safetensors")
    save_facts(best, DataBundle({}, facts=first.facts, artifacts=first.artifacts))
    atomic_write_text(best / "recipe.toml", resolved.to_toml())
