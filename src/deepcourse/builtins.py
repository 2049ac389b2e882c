"""The core's own components: optimizers and schedules (`optim`), metrics, and the study pruning callback.

The core registers them through its own `deepcourse.plugins` entry point, the same door every plugin uses, so
discovery imports no component itself and the wings below never reach up to `studies`.
"""
from __future__ import annotations

from deepcourse import metrics, optim  # noqa: F401 - importing registers them
from deepcourse.studies import pruning  # noqa: F401 - registers the `pruning` callback
