"""Where a run's numbers go: metrics.jsonl, the record every report reads, and the experiment trackers that
Accelerate feeds (`train.trackers`: TensorBoard, MLflow, W&B, Aim, ...), with the recipe as hyperparameters.

Trackers that write files write them into the run directory, RUN_DIR/trackers/ (TensorBoard: `tensorboard --logdir
runs`). MLflow logs where MLFLOW_TRACKING_URI points, else into a local store beside the runs, RUNS_ROOT/mlflow.db
(`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`), one experiment per recipe name; a resumed run continues
its MLflow run.

The trackers are fed off the training loop's hot path (MLflow took 55 ms per logged step on the main process): one
background thread logs what `RunLog.write` queues, in order; metrics.jsonl, the record, is still written at once.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import sys
import threading
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
#: records waiting for the trackers: beyond this many the loop waits for them (a tracker slower than the training
#: must not pile the run's whole history up in memory)
QUEUE_DEPTH = 64


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


class TrackerThread:
    """One background thread that hands each queued `(values, step)` to `accelerator.log`, in order, so that a slow
    tracker (a remote MLflow store, a sqlite file) never holds up a training step. A tracker's error is kept and
    raised in the training loop at its next log call, or when the thread is closed at the end of the run."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.error: BaseException | None = None
        self.kwargs = log_kwargs(accelerator)
        self.queue: queue.Queue[tuple[dict[str, float], int] | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self.thread = threading.Thread(target=self._work, name="deepcourse-trackers", daemon=True)
        self.thread.start()

    def put(self, values: dict[str, float], step: int) -> None:
        self.raise_error()
        self.queue.put((values, step))

    def wait(self) -> None:
        """Wait until every record queued so far has been handed to the trackers."""
        self.queue.join()

    def close(self) -> None:
        """Wait until every queued record is logged, then stop the thread; raise a tracker's error, if any."""
        self.queue.put(None)
        self.thread.join()
        self.raise_error()

    def raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _work(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:  # after a failure the run is ending: the later records are not logged
                try:
                    self.accelerator.log(item[0], step=item[1], log_kwargs=self.kwargs)
                except Exception as exc:  # noqa: BLE001 - raised in the training loop, not lost in this thread
                    exc.add_note(f"deepcourse: the trackers failed to log step {item[1]}")
                    self.error = exc
            self.queue.task_done()
        self.queue.task_done()


def log_kwargs(accelerator: Accelerator) -> dict[str, dict[str, Any]]:
    """What each tracker's `log` needs in another thread: MLflow's active run is per thread, so it is named."""
    if not any(t.name == "mlflow" for t in accelerator.trackers):
        return {}
    return {"mlflow": {"run_id": accelerator.get_tracker("mlflow", unwrap=True).info.run_id}}


class RunLog:
    """metrics.jsonl, plus each event's numbers to the trackers as `<split>/<metric>` (`train_epoch/...` for the
    training split's epoch means), at the event's optimizer step: the file at once, the trackers from a
    TrackerThread."""

    def __init__(self, path: Path | None, accelerator: Accelerator | None = None) -> None:
        self.file = MetricsLog(path)
        self.accelerator = accelerator if accelerator is not None and accelerator.trackers else None
        self.sender = TrackerThread(self.accelerator) if self.accelerator is not None else None

    def write(self, record: Mapping[str, Any]) -> None:
        self.file.write(record)
        if self.sender is not None:
            split = record.get("split", "train")
            prefix = split + ("_epoch" if record.get("scope") == "epoch" and split == "train" else "")
            values = {f"{prefix}/{k}": v for k, v in record.items()
                      if k not in NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.sender.put(values, int(record.get("step", 0)))

    def close(self) -> None:
        """Close the file, let the trackers log what is queued and finish. A tracker's error is raised, unless the run
        is already ending on another exception (a stop, a crash): that one is the run's outcome, this one is logged."""
        self.file.close()
        if self.accelerator is None or self.sender is None:
            return
        accelerator, sender, self.accelerator, self.sender = self.accelerator, self.sender, None, None
        ending = sys.exc_info()[1] is not None  # called from a `finally` that another exception passes through
        try:
            sender.close()
        except Exception:
            if not ending:
                raise
            log.error("deepcourse: the trackers failed", exc_info=True)
        finally:
            for tracker in accelerator.trackers:  # not end_training(): it also ends the process group
                tracker.finish()
