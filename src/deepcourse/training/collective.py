"""Decisions and files taken by the main process alone, for runs of several processes (and machines).

Only the main process reads and writes a run directory. The others may run on machines that cannot see it (several
nodes without a shared filesystem), so what they need from it (the recipe of a resumed run, its artifacts, the
checkpoint) reaches them from the main process, and so does its error: every process fails with the same message
instead of the others waiting forever for a process that has stopped.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from deepcourse.errors import UserError

T = TypeVar("T")


def launched() -> bool:
    """True inside a multi-process launch (accelerate launch, torchrun, srun + torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _state() -> Any:
    """Accelerate's process-group state, joined the way make_accelerator will join it (gloo without a GPU)."""
    from accelerate import PartialState

    from deepcourse.training.accelerator import has_accelerator

    return PartialState(cpu=not has_accelerator())


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run by the main process alone; its result, or the user error it raised, reaches every process."""
    if not launched():
        return fn()
    from accelerate.utils import broadcast_object_list

    state = _state()
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if state.is_main_process:
        try:
            payload = [("ok", fn())]
        except UserError as exc:
            payload = [("error", exc)]
        except BaseException as exc:  # noqa: BLE001 - an internal error: the others stop with its name, the main process re-raises
            failure = exc
            payload = [("crash", f"{type(exc).__name__}: {exc}")]
    broadcast_object_list(payload, from_process=0)
    kind, value = payload[0]
    if failure is not None:
        raise failure
    if kind == "error":
        raise value
    if kind == "crash":
        raise RuntimeError(f"the main process failed: {value}")
    return value


def gather_to_all(value: T) -> list[T]:
    """Every process's `value`, in process order, on every process (one all-gather)."""
    if not launched():
        return [value]
    from accelerate.utils import gather_object

    _state()
    return list(gather_object([value]))
