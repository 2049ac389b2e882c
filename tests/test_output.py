"""What the library says goes through `logging` and `warnings`, so a notebook or an application routes or silences
it; the command line shows it as it always printed it (info on stdout, warnings as `deepcourse: warning: ...` on
stderr), and `deepcourse.run` from Python shows the same lines where nobody configured logging."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from deepcourse.cli.common import TERMINAL, configure_output, default_output
from deepcourse.errors import RecipeWarning


@pytest.fixture
def deepcourse_logger() -> Iterator[logging.Logger]:
    """The `deepcourse` logger, put back as it was: its handlers and level are process-wide."""
    logger = logging.getLogger("deepcourse")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)


@contextmanager
def root_handlers(*handlers: logging.Handler) -> Iterator[None]:
    """The root logger with these handlers only (pytest's own are put back: the list is changed in place, where
    pytest removes them from)."""
    saved = list(logging.root.handlers)
    logging.root.handlers[:] = handlers
    try:
        yield
    finally:
        logging.root.handlers[:] = saved


def test_the_command_line_shows_info_on_stdout_and_warnings_on_stderr(
        deepcourse_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure_output()
    configure_output()  # a second command in the same process: still one line each
    logging.getLogger("deepcourse.training.loop").info("epoch 1/2  train loss 0.6931  (0.1 s)")
    logging.getLogger("deepcourse.deepcourse_sequence.task").info("deepcourse: pretrained vectors for 3 of 4 words",
                                                                  extra={"stderr": True})
    logging.getLogger("deepcourse.discovery").warning("plugin '%s' was skipped", "broken")
    warnings.warn("data.val_split = 0.2 is not used", RecipeWarning, stacklevel=1)
    warnings.warn("data.val_split = 0.2 is not used", RecipeWarning, stacklevel=1)  # said each time, as print did
    out, err = capsys.readouterr()
    assert out == "epoch 1/2  train loss 0.6931  (0.1 s)\n"
    assert err == ("deepcourse: pretrained vectors for 3 of 4 words\n"
                   "deepcourse: warning: plugin 'broken' was skipped\n"
                   "deepcourse: warning: data.val_split = 0.2 is not used\n"
                   "deepcourse: warning: data.val_split = 0.2 is not used\n")
    assert [h.get_name() for h in deepcourse_logger.handlers].count(TERMINAL) == 1


def test_the_command_line_leaves_other_warnings_to_python(
        deepcourse_logger: logging.Logger, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[tuple[str, type[Warning]]] = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, *rest: shown.append((str(message),
                                                                                               category)))
    configure_output()
    warnings.warn("torch says something", UserWarning, stacklevel=1)
    assert shown == [("torch says something", UserWarning)] and capsys.readouterr().err == ""


def test_a_user_silences_the_library_with_logging_and_warnings(
        deepcourse_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    configure_output()
    deepcourse_logger.setLevel(logging.ERROR)
    logging.getLogger("deepcourse.training.loop").info("epoch 1/2")
    logging.getLogger("deepcourse.discovery").warning("plugin 'broken' was skipped")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        warnings.warn("data.val_split = 0.2 is not used", RecipeWarning, stacklevel=1)
    assert capsys.readouterr() == ("", "")


def test_python_shows_the_lines_where_nobody_configured_logging(
        deepcourse_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    deepcourse_logger.handlers.clear()
    deepcourse_logger.setLevel(logging.NOTSET)
    with root_handlers():  # a fresh notebook
        default_output()
        default_output()
        logging.getLogger("deepcourse.training.loop").info("epoch 1/2")
    assert capsys.readouterr().out == "epoch 1/2\n"


def test_python_leaves_a_configured_logging_alone(
        deepcourse_logger: logging.Logger, capsys: pytest.CaptureFixture[str]) -> None:
    deepcourse_logger.handlers.clear()
    deepcourse_logger.setLevel(logging.NOTSET)
    with root_handlers(logging.NullHandler()):  # logging.basicConfig(...) in the application
        default_output()
        logging.getLogger("deepcourse.training.loop").info("epoch 1/2")
    assert deepcourse_logger.handlers == [] and deepcourse_logger.level == logging.NOTSET
    assert capsys.readouterr().out == ""
