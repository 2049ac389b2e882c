"""deepcourse: train the networks of a deep-learning course from TOML recipes.

From Python: `deepcourse.run(recipe, *overrides)`, `deepcourse.evaluate(run_dir)`, `deepcourse.predict(run_dir,
inputs)`, `deepcourse.explain(run_dir, inputs)`, `deepcourse.lr_find(recipe)` (see `deepcourse.runner`); in a
notebook what they return shows inline. Plugins import `deepcourse.api`, the one stable surface for them. Importing this
package loads nothing else, so `deepcourse --help` answers at once.
"""
from __future__ import annotations

from typing import Any

from deepcourse._version import __version__

__all__ = ["__version__", "run", "evaluate", "predict", "explain", "lr_find", "RunResult"]
_RUNNER = ("run", "evaluate", "predict", "explain", "lr_find", "RunResult")


def __getattr__(name: str) -> Any:
    if name in _RUNNER:
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'deepcourse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_RUNNER])
