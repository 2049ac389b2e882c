"""The core's own components: optimizers and schedules (`optim`), metrics, the study pruning callback and the
`ensemble` model.

The core registers them through its own `deepcourse.plugins` entry point, the same door every plugin uses, so
discovery imports no component itself and the wings below never reach up to `studies`.
"""
from __future__ import annotations

from deepcourse import metrics, optim  # noqa: F401 - importing registers them
from deepcourse.studies import pruning  # noqa: F401 - registers the `pruning` callback
from deepcourse.training import ensemble  # noqa: F401 - registers the `ensemble` model
