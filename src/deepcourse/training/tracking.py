"""Where a run's numbers go: metrics.jsonl, the record every report reads, and the experiment trackers that
Accelerate feeds (`train.trackers`: TensorBoard, MLflow, W&B, Aim, ...), with the recipe as hyperparameters.

Trackers that write files write them into the run directory, RUN_DIR/trackers/ (TensorBoard: `tensorboard --logdir
runs`). MLflow logs where MLFLOW_TRACKING_URI points, else into a local store beside the runs, RUNS_ROOT/mlflow.db
(`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`), one experiment per recipe name; a resumed run continues
its MLflow run.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from deepcourse.errors import UserError
from deepcourse.recipe.overrides import flatten
from deepcourse.recipe.schema import NON_COMPUTING_KEYS, Recipe
from deepcourse.rundir import files
from deepcourse.rundir.layout import MetricsLog

log = logging.getLogger(__name__)

TRACKERS_FILE = "trackers.json"
NOT_LOGGED = ("event", "epoch", "step", "split", "scope")


def hyperparameters(recipe: Recipe) -> dict[str, int | float | str | bool]:
    """The resolved recipe as flat `key.path -> value` pairs, lists and tables as JSON text (what trackers take),
    without the keys that change only how a run logs and saves: a resumed run has exactly the same ones."""
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in flatten(recipe.to_dict()).items() if not k.startswith(NON_COMPUTING_KEYS)}


def start_trackers(accelerator: Accelerator, recipe: Recipe, run_dir: Path, runs_root: Path) -> None:
    """Start every tracker of train.trackers for this run (main process; Accelerate no-ops elsewhere)."""
    if not recipe.train.trackers:
        return
    accelerator.project_configuration.logging_dir = str(run_dir / "trackers")
    init: dict[str, dict[str, Any]] = {}
    if "mlflow" in recipe.train.trackers:
        init["mlflow"] = {"run_name": run_dir.name, "logging_dir": str((runs_root / "mlflow-artifacts").resolve())}
        if accelerator.is_main_process:
            init["mlflow"].update(mlflow_run(run_dir, runs_root))
    try:
        accelerator.init_trackers(recipe.name, config=hyperparameters(recipe), init_kwargs=init)
    except Exception as exc:
        if not type(exc).__module__.startswith("mlflow."):
            raise
        import mlflow  # its store answered (training.mlflow_store) and refused the run: the user's to settle there

        said = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"train.trackers: MLflow at {mlflow.get_tracking_uri()!r} did not start the run: "
                        f"{said}") from None
    if "mlflow" in recipe.train.trackers and accelerator.is_main_process:
        import mlflow

        run = accelerator.get_tracker("mlflow", unwrap=True)
        files.write_json(run_dir / TRACKERS_FILE, {"mlflow_run_id": run.info.run_id,
                                                   "mlflow_tracking_uri": mlflow.get_tracking_uri()})


def mlflow_run(run_dir: Path, runs_root: Path) -> dict[str, str]:
    """Point MLflow at its store (the user's MLFLOW_TRACKING_URI; a resumed run's own store; else a local sqlite file
    beside the runs) and return the run to continue, if this run has one there."""
    import mlflow

    earlier = files.read_json(run_dir / TRACKERS_FILE, missing={})
    if "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri(earlier.get("mlflow_tracking_uri") or
                                f"sqlite:///{(runs_root / 'mlflow.db').resolve()}")
    run_id = earlier.get("mlflow_run_id")
    if not run_id:
        return {}
    try:
        mlflow.tracking.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        log.warning(f"MLflow run {run_id} of {run_dir} is not in {mlflow.get_tracking_uri()}; the resumed run logs "
                    f"to a new MLflow run")
        return {}
    return {"run_id": run_id}


class RunLog:
    """metrics.jsonl, plus each event's numbers to the trackers as `<split>/<metric>` (`train_epoch/...` for the
    training split's epoch means), at the event's optimizer step."""

    def __init__(self, path: Path | None, accelerator: Accelerator | None = None) -> None:
        self.file = MetricsLog(path)
        self.accelerator = accelerator if accelerator is not None and accelerator.trackers else None

    def write(self, record: Mapping[str, Any]) -> None:
        self.file.write(record)
        if self.accelerator is not None:
            split = record.get("split", "train")
            prefix = split + ("_epoch" if record.get("scope") == "epoch" and split == "train" else "")
            values = {f"{prefix}/{k}": v for k, v in record.items()
                      if k not in NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.accelerator.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        self.file.close()
        if self.accelerator is not None:
            for tracker in self.accelerator.trackers:  # not end_training(): it also ends the process group
                tracker.finish()
            self.accelerator = None
