"""deepcourse from Python: `run`, `evaluate`, `predict`, `explain` and `lr_find`, for notebooks and scripts.

    import deepcourse
    result = deepcourse.run("quickstart", "train.epochs=2")      # a shipped recipe, a file, or a dict
    result.best["accuracy"], result.run_dir                      # as a notebook cell's value: curves and numbers
    deepcourse.evaluate(result.run_dir, split="test")
    deepcourse.lr_find("quickstart").suggestion                  # the figure shows inline

They do what the commands of the same names do (the same recipe checks, run directory, checkpoints and report) and
raise `deepcourse.api.UserError` where a command would exit 2: `print(exc)` shows every problem.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepcourse.cli.common import default_output
from deepcourse.discovery import load_plugins
from deepcourse.recipe.load import load_recipe
from deepcourse.results.display import Explained, LRFind, RunResult
from deepcourse.results.inference import evaluate_run, predict_run
from deepcourse.results.report import write_report
from deepcourse.rundir.layout import read_metrics
from deepcourse.training.loop import fit

PathLike = str | os.PathLike[str]


def run(recipe: PathLike | Mapping[str, Any], *overrides: str, runs_root: PathLike | None = None,
        run_dir: PathLike | None = None, report: bool = True) -> RunResult:
    """Train a recipe (a file, the name of a shipped recipe such as 'quickstart', or a dict laid out as the TOML
    file) with `--set`-style overrides ('train.epochs=2'); the run goes to runs_root/<name>/<time>/ (default
    ./runs) or to `run_dir`. The torch thread count is left as it was."""
    default_output()  # the command line's lines (each epoch's), unless the caller configured logging
    load_plugins()  # discovery, once per process: a recipe names the installed plugins' components
    if isinstance(recipe, Mapping):
        resolved = load_recipe(data=recipe, overrides=overrides)
    else:
        resolved = load_recipe(recipe, overrides)
    fitted = fit(resolved, runs_root=Path(runs_root or "runs"), run_dir=Path(run_dir) if run_dir else None)
    summary, out = fitted.summary, Path(fitted.summary["run_dir"])
    from accelerate.state import PartialState

    # the report takes the trained model as it is: no second build of the task and model
    written = write_report(out, trained=fitted.trained) if report and PartialState().is_main_process else None
    return RunResult(out, dict(summary.get("best", {})), read_metrics(out / "metrics.jsonl"), summary, written)


def evaluate(run_dir: PathLike, split: str | None = None, *, data_dir: PathLike | None = None,
             checkpoint: str = "best", progress: bool = False) -> dict[str, Any]:
    """The metrics of a run's best (or latest) weights on a split (default: the recipe's eval.split), exactly as
    `deepcourse evaluate --json` prints them."""
    default_output()
    load_plugins()
    _, metrics = evaluate_run(Path(run_dir), split=split, data_dir=Path(data_dir) if data_dir else None,
                              which=checkpoint, progress=progress)
    return metrics


def predict(run_dir: PathLike, inputs: PathLike | Sequence[PathLike], *, batch_size: int = 64) -> list[Any]:
    """The run's predictions, one per input (an image file, a sentence, as the task reads them)."""
    default_output()
    load_plugins()
    items = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    _, results = predict_run(Path(run_dir), items, batch_size=batch_size)
    return list(results)


def explain(run_dir: PathLike, inputs: PathLike | Sequence[PathLike], *, output: PathLike | None = None,
            target: str | None = None, topk: int | None = None, nbest: int | None = None, layer: str | None = None,
            channels: int | None = None, steps: int = 32) -> Explained:
    """What `deepcourse explain` shows (Grad-CAM, feature maps, integrated gradients; a tagger's marginals and n-best
    paths), for inputs as `predict` takes them: the figures (written to `output`, default RUN_DIR/explain) shown
    inline as a cell's value, and the numbers in `.numbers`."""
    from deepcourse.results.explain import ExplainOptions, explain_run
    from deepcourse.rundir.outputs import writable_folder

    default_output()
    load_plugins()
    folder = writable_folder(Path(output) if output is not None else Path(run_dir) / "explain", "output")
    items = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(i) for i in inputs]
    options = ExplainOptions(target=target, topk=topk, nbest=nbest, layer=layer, channels=channels, steps=steps)
    return Explained(folder, explain_run(Path(run_dir), items, folder, options))


def lr_find(recipe: PathLike | Mapping[str, Any], *overrides: str, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, output: PathLike | None = None) -> LRFind:
    """The learning-rate range test of a recipe, as `deepcourse lr-find` runs it: `.suggestion`, every step's rate
    and loss in `.result`, and the loss-against-rate figure shown inline as a cell's value (`.figure()`). Writes
    lr_find.png, .csv and .json only when `output` names a folder; trains nothing that is kept."""
    from deepcourse.rundir.outputs import writable_folder
    from deepcourse.training.lrfind import check_range, find_lr

    default_output()
    check_range(start_lr, end_lr)  # before the recipe's data is read
    load_plugins()
    resolved = load_recipe(data=recipe, overrides=overrides) if isinstance(recipe, Mapping) else \
        load_recipe(recipe, overrides)
    folder = writable_folder(Path(output), "output") if output is not None else None
    result = find_lr(resolved, folder, start_lr=start_lr, end_lr=end_lr, num_steps=steps)
    return LRFind(result, resolved.name, folder)
