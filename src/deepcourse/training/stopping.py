"""When training stops early: Ctrl-C or SIGTERM agreed between processes, and early stopping on the monitor.

A stop request (SIGINT from Ctrl-C, SIGTERM from Slurm or Kubernetes preempting the job) sets a flag; the loop looks
at it at fixed points and saves a checkpoint before it exits. It listens from the moment a run's folder is made: a
stop while the run is still starting is honoured before its first step (a new run then keeps nothing, a resumed one
stays as its last checkpoint left it), never by the signal's default of ending the process mid-write. Every process
must stop at the same point, or the next collective operation waits forever, so with several processes `agreed`
makes one process's request everyone's, at the same optimizer steps (every `train.stop_check_every`) and evaluation
batches in every process. Which evaluation is better and when patience runs out is decided here too, so the loop
only asks.
"""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from deepcourse.recipe.schema import TrainSection
from deepcourse.training.callbacks import TrainState
from deepcourse.training.checkpoint import latest_checkpoint

log = logging.getLogger(__name__)

#: a second Ctrl-C within this many seconds of the first is the same request (a launcher forwarding it, a key
#: held down), not a wish to abort
REPEAT_WINDOW_S = 2.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A stop request was honoured: a checkpoint was written (`checkpoint`), or a run stopped while it was starting
    kept nothing (`detail` says what became of its folder); the command exits 128 + the signal's number (130 for
    Ctrl-C, 143 for SIGTERM), as a shell reports a process ended by that signal."""

    def __init__(self, checkpoint: Path | None, signum: int = signal.SIGINT, detail: str = "") -> None:
        name = signal.Signals(signum).name
        said = f"stopped by {name}; state saved in {checkpoint}" if checkpoint else f"stopped by {name}"
        super().__init__(said + detail)
        self.checkpoint, self.signum = checkpoint, int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopRequest:
    """SIGINT or SIGTERM asks the loop to stop at its next stop point and save. A second Ctrl-C more than
    REPEAT_WINDOW_S later aborts at once, in a run started by hand; under a launcher (which forwards signals and
    escalates to SIGKILL on its own) and for SIGTERM, repeats never abort the save."""

    def __init__(self) -> None:
        self.requested = False
        self.starting = True  # until the loop's first step: a stop then saves nothing (there is nothing to save)
        self.signum = int(signal.SIGINT)
        self._since = 0.0
        self._previous: dict[int, Any] = {}
        self._launched = "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ

    def __enter__(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (embedded use): keep the default behaviour
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.requested:
            if signum == signal.SIGINT and self.signum == signal.SIGINT and not self._launched \
                    and now - self._since > REPEAT_WINDOW_S:
                raise KeyboardInterrupt
            return
        self.requested, self.signum, self._since = True, int(signum), now
        what = "Ctrl-C again to abort" if signum == signal.SIGINT and not self._launched else "saving first"
        how = "before training starts" if self.starting else f"at the next step and saving a checkpoint ({what})"
        log.info(f"\ndeepcourse: {signal.Signals(signum).name}: stopping {how}", extra={"stderr": True})

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        """Put the earlier handlers back; but a launched process that honoured a stop is on its way out with that
        stop's code, so it ignores the SIGTERM that its launcher sends the ranks still running when the first one
        exits (else a rank slower to exit reports -15, killed, instead of 143)."""
        honoured = self._launched and kind is not None and issubclass(kind, Interrupted)
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_IGN if honoured else previous)


def stop_while_starting(accelerator: Accelerator, stop: StopRequest, run_dir: Path, *, resumed: bool,
                        removed: bool) -> None:
    """Honour a stop asked for while the run was starting (a Ctrl-C, a SIGTERM as soon as its folder existed), before
    its first step. A new run has nothing to keep: `fit`'s clean-up removes its folder (`removed`), or empties a
    --run-dir that existed before; a resumed run is as its last checkpoint left it."""
    if not agreed(accelerator, stop):  # all-reduce + host sync, once
        return
    if resumed:
        raise Interrupted(latest_checkpoint(run_dir / "checkpoints"), stop.signum)
    raise Interrupted(None, stop.signum, f" while the run was starting, before its first checkpoint: nothing was "
                                         f"trained, and {run_dir} is {'removed' if removed else 'emptied'}; start the "
                                         f"run again with the same command")


def agreed(accelerator: Accelerator, stop: StopRequest) -> bool:
    """True if any process was asked to stop: all processes must stop at the same point or collectives hang. The
    same all-reduce agrees on the signal too (the largest number asked: SIGTERM over SIGINT), so that every process
    reports it and exits with its code, not only the one that a preemption reached. Call it at the same points in
    every process; with one process it costs nothing."""
    if accelerator.num_processes == 1:
        return stop.requested
    t = torch.tensor([float(stop.signum) if stop.requested else 0.0], device=accelerator.device)
    signum = int(accelerator.reduce(t, reduction="max").item())  # 0: nobody was asked
    if signum:
        stop.signum = signum
    return signum > 0


def any_process(accelerator: Accelerator, flag: bool | torch.Tensor) -> bool:
    """True if any process says so (one all-reduce; with one process it costs nothing): a decision every process
    takes together, such as a checkpoint when time is up on the main process's clock. A flag still on the device
    (a tensor) is reduced there, so the decision costs one host sync."""
    t = flag.float().reshape(1) if isinstance(flag, torch.Tensor) else torch.tensor(
        [1.0 if flag else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        t = accelerator.reduce(t, reduction="sum")
    return bool(t.item() > 0)  # host sync


def all_finite(acc: Accelerator, loss: torch.Tensor) -> bool:
    """Whether every process's loss is finite: the processes skip a step together, or none leaves the gradients'
    all-reduce that the others wait in."""
    return not any_process(acc, ~torch.isfinite(loss.detach()).all())


def check_due(accelerator: Accelerator, count: int, every: int) -> bool:
    """Whether `agreed` is to be asked after the count-th step or batch: each time with one process, every `every`
    with several (the same counts everywhere), so the all-reduce and its host sync are rare."""
    return accelerator.num_processes == 1 or count % every == 0


def record_evaluation(state: TrainState, value: float, epoch: int, *, mode: str, train: TrainSection) -> bool:
    """Update the best value and the patience count with one evaluation; True when it is a new best."""
    min_delta = train.early_stopping.min_delta if train.early_stopping else 0.0
    better = state.best_value is None or (value > state.best_value + min_delta if mode == "max"
                                          else value < state.best_value - min_delta)
    if better:
        state.best_value, state.best_epoch, state.bad_evals = float(value), epoch, 0
    else:
        state.bad_evals += 1
    return better


def patience_exhausted(state: TrainState, train: TrainSection) -> bool:
    return bool(train.early_stopping) and state.bad_evals >= train.early_stopping.patience  # type: ignore[union-attr]
