"""Where a study lives: Optuna's storage for a URL or a journal file, and the names the workers and the trials'
runs agree on (kept apart from `deepcourse.studies.study` so a trial's pruning callback loads only this)."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

PRUNED_FILE = "pruned.json"  # written into a run the study's pruner stopped (deepcourse.studies.pruning)
HEARTBEAT_S = 20
GRACE_S = 90
CREATE_TRIES = 5


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file (a path, the embedded default) or a database URL (postgresql://, mysql://, sqlite:///)."""
    import optuna

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    import time
    import warnings

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(CREATE_TRIES):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (IntegrityError, ProgrammingError):
            # Workers started together on an empty database race to create Optuna's tables ("already exists");
            # the loser finds them made on its next try.
            if attempt == CREATE_TRIES - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")
