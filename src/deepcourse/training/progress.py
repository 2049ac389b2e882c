"""Progress bars: the one place a bar is made, so that training and evaluation show the same kind of bar wherever
they run.

`tqdm.auto` alone gets two places wrong: given `disable=None` it turns bars off whenever its stream is not a
terminal, which is the case in a Jupyter kernel (no bar in a notebook); and it needs ipywidgets for its notebook
bar, which many kernels lack. Here a Jupyter kernel gets tqdm's widget bar when
ipywidgets is installed and its text bar otherwise (a notebook shows it, carriage returns and all); a terminal gets
the usual bar; anything else (a CI log, output piped to a file) gets none, so logs are not filled with redrawn bars.
`DEEPCOURSE_PROGRESS=1` forces bars on there, `DEEPCOURSE_PROGRESS=0` turns them off everywhere.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from typing import Any

#: the environment variable that overrides where bars show: 1 (also on a non-terminal) or 0 (nowhere)
PROGRESS_ENV = "DEEPCOURSE_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on", "always"), ("0", "false", "no", "off", "never")


def bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over `iterable` (or a manual one: `total=`, `.update()`), shown as `kind_of_bar` decides; `show`
    False (train.progress = false, a process other than the main one) gives a disabled bar, which still counts and
    accepts every call, so callers need no second code path. Other arguments are tqdm's."""
    kind = kind_of_bar(show)
    if kind == "widget":
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, disable=False, **kwargs)
    from tqdm.std import tqdm

    if kind == "text":
        return tqdm(iterable, disable=False, file=kwargs.pop("file", sys.stderr), **kwargs)
    return tqdm(iterable, disable=True, **kwargs)


def kind_of_bar(show: bool = True) -> str:
    """'widget' (Jupyter with ipywidgets), 'text' (a terminal; Jupyter without ipywidgets; forced on) or 'off'."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if not show or forced in _OFF:
        return "off"
    if in_jupyter_kernel():
        return "widget" if has_widgets() else "text"
    if forced in _ON or _isatty(sys.stderr):
        return "text"
    return "off"


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter (ipykernel) kernel: a notebook, JupyterLab, VS Code's notebooks, nbclient. A terminal
    IPython is not one (it is a terminal, and gets the terminal's bar)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def has_widgets() -> bool:
    """Whether ipywidgets is installed: tqdm's notebook bar is a widget, and fails to show without it."""
    return importlib.util.find_spec("ipywidgets") is not None


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
