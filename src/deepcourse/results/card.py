"""A run's model card: RUN/README.md in the Hugging Face layout, so the run directory reads as a model repository.

Everything on it comes from the run's own files: the YAML header (library, tags, dataset, metrics and a model-index
of the results, through huggingface_hub's `ModelCardData`), the data, the resolved recipe, the best and holdout
metrics, the figures `deepcourse report` drew, and what the model is and is not for. When the run is one of several
in its folder that differ only in their seed (a sweep over seeds, a study's repeats), the metrics also show mean ±
std and the 95% interval over those runs (`deepcourse.results.stats`), with each seed's value: one run's number
alone says nothing about the spread a reader should expect.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from deepcourse.recipe.overrides import differing_keys
from deepcourse.results.compare import UNLABELLED
from deepcourse.results.stats import SPREAD, summarize
from deepcourse.rundir.files import atomic_write_text
from deepcourse.rundir.layout import RunData, is_run_dir, read_run, require_run_dir

#: the Hub's task names for deepcourse's tasks (pipeline_tag and the model-index's task type)
HUB_TASKS = {"image-classification": "image-classification", "sequence-tagging": "token-classification",
             "tagging": "token-classification"}
SKIPPED = ("epoch", "step", "num_samples")


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar metrics of a summary's table (no epoch, step or sample count)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in SKIPPED}


def seed_siblings(run: RunData) -> list[RunData]:
    """The runs of this run's folder (itself included) whose recipes differ from it in the seed alone, each with a
    summary; just this run when there are none."""
    group = [run]
    parent = run.path.parent
    for other in sorted(p for p in parent.iterdir() if p.is_dir() and p.resolve() != run.path.resolve()):
        if not is_run_dir(other):
            continue
        candidate = read_run(other)
        if candidate.summary.get("best") and \
                set(differing_keys([run.recipe, candidate.recipe], ignore=UNLABELLED)) <= {"seed"}:
            group.append(candidate)
    return group


def metrics_section(run: RunData) -> list[str]:
    """The best (and holdout) metrics; over seeds when the run has seed siblings."""
    best, split = numbers(run.summary.get("best", {})), run.eval_split
    lines = ["## Metrics", ""]
    if not best:
        return lines + ["The run has no evaluated metrics yet.", ""]
    epoch = run.summary.get("best", {}).get("epoch", "?")
    lines += [f"Best {split} metrics of this run (epoch {epoch}, selected on {run.summary.get('monitor', '?')}), "
              f"seed {run.recipe.get('seed', '?')}:", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in best.items()]
    holdout = numbers(run.summary.get("holdout", {}))
    if holdout:
        lines += ["", "Holdout (kept out of training and selection):", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in holdout.items()]
    group = seed_siblings(run)
    if len(group) > 1:
        seeds = [g.recipe.get("seed", "?") for g in group]
        lines += ["", f"Over the {len(group)} runs of this recipe that differ only in their seed (seeds "
                      f"{', '.join(map(str, seeds))}), {split}:", "",
                  "| metric | mean ± std | 95% CI | per seed |", "|---|---|---|---|"]
        for metric in best:
            values = [numbers(g.summary.get("best", {})).get(metric) for g in group]
            if any(v is None for v in values):
                continue
            summary = summarize([float(v) for v in values if v is not None], metric)
            lines.append(f"| {metric} | {summary.shown()} | {summary.interval()} | "
                         f"{', '.join(f'{v:.4f}' for v in values if v is not None)} |")
        lines += ["", f"{SPREAD}."]
    return lines + [""]


def card_data(run: RunData) -> Any:
    """The YAML header: huggingface_hub's ModelCardData with a model-index of the best metrics."""
    from huggingface_hub import EvalResult, ModelCardData

    recipe = run.recipe
    task, model, data = recipe["task"]["name"], recipe["model"]["name"], recipe["data"]["name"]
    hub_task = HUB_TASKS.get(task, task)
    results = [EvalResult(task_type=hub_task, dataset_type=data, dataset_name=data, dataset_split=run.eval_split,
                          metric_type=metric, metric_value=round(value, 6))
               for metric, value in numbers(run.summary.get("best", {})).items()]
    return ModelCardData(library_name="deepcourse", tags=["deepcourse", task, model], datasets=[data],
                         metrics=sorted(numbers(run.summary.get("best", {}))), pipeline_tag=hub_task,
                         model_name=run.name, eval_results=results or None)


def render_card(run: RunData, figures: Sequence[Path] = ()) -> str:
    """The card's text: the YAML header, then data, recipe, metrics, figures, intended use and limitations."""
    recipe = run.recipe
    task, model, data = recipe["task"]["name"], recipe["model"]["name"], recipe["data"]["name"]
    params = run.summary.get("num_parameters", run.info.get("num_parameters"))
    shown_params = f"{params:,}" if isinstance(params, int) else "?"
    lines = ["---", card_data(run).to_yaml(), "---", "", f"# {run.name}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]), ""]
    lines += [f"A `{model}` network ({shown_params} parameters) trained for {task} with "
              f"deepcourse from the recipe below: {run.summary.get('epochs', '?')} epochs, "
              f"{run.summary.get('steps', '?')} optimizer steps, {run.summary.get('wall_time_s', '?')} s on "
              f"{run.info.get('device', '?')}.", "",
              "## Data", "", f"Dataset `{data}` (the recipe's `[data]` table); evaluated on its `{run.eval_split}` "
                             f"split.", ""]
    lines += metrics_section(run)
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}]({f.as_posix()})" for f in figures] + [""]
    lines += ["## Intended use", "",
              f"Teaching and study: a reference {task} model of a deep-learning course, to compare with, fine-tune "
              f"from (`model.init_from`) or export (`deepcourse export`). Load it with deepcourse "
              f"(`deepcourse predict RUN INPUTS`, or `deepcourse.api` in Python) or from an exported file.", "",
              "## Limitations", "",
              f"Trained on `{data}` alone: its numbers hold for data like that split's, not for other sources, "
              f"sizes or languages. The metrics are of one training run" +
              (" (the spread over seeds is above)" if len(seed_siblings(run)) > 1 else
               "; another seed gives other numbers, and without repeats their spread is unknown") +
              ". It has not been assessed for fairness, robustness or safety: do not use it to make decisions about "
              "people.", "",
              "## Recipe", "", "```toml", tomli_w.dumps(recipe).rstrip(), "```", ""]
    return "\n".join(lines)


def run_figures(run_dir: Path) -> list[Path]:
    """The figures already in the run directory (those `deepcourse report` drew), relative to it."""
    return sorted(p.relative_to(run_dir) for p in (run_dir / "report").glob("*.png")) \
        if (run_dir / "report").is_dir() else []


def write_card(run_dir: Path) -> Path:
    """Write RUN_DIR/README.md (replaced whole, through a temporary file) and return it."""
    require_run_dir(run_dir)
    run = read_run(run_dir)
    path = run_dir / "README.md"
    atomic_write_text(path, render_card(run, run_figures(run_dir)))
    return path
