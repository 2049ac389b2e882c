"""Where a study lives: Optuna's storage for a URL or a journal file, and the names the workers and the trials'
runs agree on (kept apart from `deepcourse.study` so a trial's pruning callback loads only this)."""
from __future__ import annotations

from typing import Any

PRUNED_FILE = "pruned.json"  # written into a run the study's pruner stopped (deepcourse.pruning)
HEARTBEAT_S = 20
GRACE_S = 90


def open_storage(url: str) -> Any:
    """A journal file (a path, the embedded default) or a database URL (postgresql://, mysql://, sqlite:///)."""
    import optuna

    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental in Optuna
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
