"""The callback through which a study's trial reports its evaluations to Optuna, and stops when pruned.

`deepcourse tune` adds it to every trial it runs (`train.callbacks`); each evaluation's monitored value is reported
at its epoch, and when the study's pruner finds the trial unpromising the run ends at the end of that epoch, as a
normal run directory with its checkpoint and summary, marked by `pruned.json`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepcourse.registry import CALLBACKS
from deepcourse.rundir.files import write_json
from deepcourse.studies.store import PRUNED_FILE, open_storage
from deepcourse.training.callbacks import Callback, TrainContext
from deepcourse.training.collective import on_main

if TYPE_CHECKING:
    import optuna


@CALLBACKS.register("optuna_pruning")
class OptunaPruning(Callback):
    """Report each evaluation to an Optuna trial; end the run when the study prunes it (added by deepcourse tune)."""

    def __init__(self, storage: str, study: str, trial: int, monitor: str) -> None:
        self.storage, self.study, self.trial_id, self.monitor = storage, study, trial, monitor
        self.trial: optuna.Trial | None = None

    def on_train_start(self, ctx: TrainContext) -> None:
        if ctx.is_main:
            import optuna

            study = optuna.load_study(study_name=self.study, storage=open_storage(self.storage))
            self.trial = optuna.trial.Trial(study, self.trial_id)

    def on_evaluate(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.monitor)

        def decide() -> bool:
            if value is None or self.trial is None:
                return False
            self.trial.report(float(value), step=ctx.state.epoch + 1)
            return bool(self.trial.should_prune())

        if on_main(decide):
            ctx.state.done = True  # the loop ends after this epoch's checkpoint
            if ctx.is_main:
                write_json(ctx.run_dir / PRUNED_FILE, {"epoch": ctx.state.epoch + 1, self.monitor: value})
