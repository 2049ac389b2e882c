"""The holdout score: the selected model on data it was never trained or selected on, once, at the end of a run.

Validation picks the epoch (early stopping, best/) and the recipe (sweeps, studies), so its score is optimistic for
unseen data. `data.holdout` keeps the tail of train out (whole documents where the dataset marks them, the same for
every seed and candidate); the run scores best/'s weights on it when training ends and writes RUN/holdout.json. Only
the score is recorded: nothing in the loop reads it, so nothing can select on it.
"""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

from . import files
from .callbacks import TrainContext
from .checkpoint import best_folder, load_best_weights
from .collective import on_main
from .errors import CheckpointError
from .evaluation import evaluation_loop
from .schema import HOLDOUT

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
        print(f"deepcourse: holdout ({metrics.get('num_samples')} samples, never trained or selected on): {shown}",
              flush=True)
    return record


def _has_best(ctx: TrainContext) -> bool:
    try:
        best_folder(ctx.run_dir)
    except CheckpointError:  # no evaluation finished
        return False
    return True
