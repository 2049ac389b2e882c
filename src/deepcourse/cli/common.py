"""What every command shares: what the library says shown on the terminal, discovering the installed plugins once, the
error handling that turns a user error into exit 2 and one message, the `--set KEY=VALUE` option, and INPUTS read from
the arguments or standard input.

The library speaks through `logging` (the `deepcourse` logger and its children) and `warnings` (`RecipeWarning`), so
that a notebook or an application can route or silence it; the command line shows both as it always printed them:
info lines on stdout (those marked `extra={"stderr": True}` on stderr, where they stay out of `--json` output) and
warnings on stderr as `deepcourse: warning: ...`. `logging` is imported only when a command runs: `--help` stays quick.
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, TextIO

import click

from deepcourse.errors import RecipeWarning, UserError

if TYPE_CHECKING:
    import logging

#: the name of the handler that `configure_output` and `default_output` put on the `deepcourse` logger
TERMINAL = "deepcourse-terminal"
#: the command line's -v minus -q: the level `configure_output` gives the `deepcourse` logger
_VERBOSITY = {"level": 0}


def set_verbosity(level: int) -> None:
    """-q (< 0): warnings and errors only; 0: info; -v (> 0): debug too. Set by the group, read by each command."""
    _VERBOSITY["level"] = level


def _logger_level() -> int:
    import logging

    level = _VERBOSITY["level"]
    return logging.WARNING if level < 0 else logging.DEBUG if level > 0 else logging.INFO


def configure_output() -> None:
    """The command line's output: every record of the `deepcourse` logger from INFO up (-q: WARNING, -v: DEBUG) on
    the terminal, and each RecipeWarning as `deepcourse: warning: ...` every time it is raised (unless -W or
    PYTHONWARNINGS says otherwise). Idempotent: a second call (another command in the same process) replaces the
    first one's handler."""
    import logging
    import warnings

    logger = logging.getLogger("deepcourse")
    for old in [h for h in logger.handlers if h.get_name() == TERMINAL]:
        logger.removeHandler(old)
    logger.addHandler(_terminal_handler())
    logger.setLevel(_logger_level())
    if not getattr(warnings.showwarning, TERMINAL, False):
        warnings.showwarning = _show_recipe_warnings(warnings.showwarning)
    if not sys.warnoptions:
        warnings.simplefilter("always", RecipeWarning)


def default_output() -> None:
    """For `deepcourse.run`/`evaluate`/`predict` from Python: the command line's lines (the epochs of a run) in a
    notebook or script that configured no logging; one that did (`logging.basicConfig`, a handler on `deepcourse`)
    decides for itself. Remove it with `logging.getLogger("deepcourse").handlers.clear()`."""
    import logging

    logger = logging.getLogger("deepcourse")
    if logger.hasHandlers():
        return
    logger.addHandler(_terminal_handler())
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def _terminal_handler() -> logging.Handler:
    import logging

    class Terminal(logging.Handler):
        """Writes to the streams of the moment (a test runner or `CliRunner` swaps sys.stdout) and lets a broken
        pipe through, as `print` did: `deepcourse run ... | head` ends quietly in `handle_errors`."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                message = self.format(record)
                stream: TextIO = sys.stdout
                if record.levelno >= logging.WARNING:
                    stream, message = sys.stderr, f"deepcourse: {record.levelname.lower()}: {message}"
                elif getattr(record, "stderr", False):
                    stream = sys.stderr
                stream.write(message + "\n")
                stream.flush()
            except BrokenPipeError:
                raise
            except Exception:  # noqa: BLE001 - logging's own policy for a failing handler: report, never raise
                self.handleError(record)

    handler = Terminal()
    handler.set_name(TERMINAL)
    return handler


def _show_recipe_warnings(original: Callable[..., None]) -> Callable[..., None]:
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None,
             line: str | None = None) -> None:
        if not issubclass(category, RecipeWarning):
            original(message, category, filename, lineno, file, line)
            return
        stream = file if file is not None else sys.stderr
        stream.write(f"deepcourse: warning: {message}\n")
        stream.flush()

    setattr(show, TERMINAL, True)
    return show


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"deepcourse: error: {message}", err=True)
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command: discover the plugins first (the command line is a face: recipes are loaded after discovery,
    never triggering it), then map each kind of failure to its exit status and one message."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from deepcourse.discovery import load_plugins
        from deepcourse.training.stopping import Interrupted

        try:
            configure_output()
            load_plugins()  # once per process; a broken plugin is reported by name, never fatal
            return fn(*args, **kwargs)
        except UserError as exc:
            _fail(exc.render(), exc.exit_code)
        except Interrupted as exc:  # without a checkpoint, the message says what became of the run
            resume = f". Continue with: deepcourse run --resume {exc.checkpoint.parent.parent}" \
                if exc.checkpoint else ""
            click.echo(f"deepcourse: {exc}{resume}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("deepcourse: aborted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # `deepcourse evaluate ... | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except click.exceptions.Exit:
            raise
        except Exception:  # noqa: BLE001 - a bug in deepcourse or a plugin: show it, exit 1
            traceback.print_exc()
            click.echo("deepcourse: internal error (the traceback above is a bug, not a problem with your input;"
                       " please report it)", err=True)
            sys.exit(1)
    return wrapper


def override_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a recipe key; VALUE is a TOML literal (repeatable).")(fn)


def read_inputs(inputs: Sequence[str], command: str) -> list[str]:
    """INPUTS of `predict` and `explain`: the arguments, or with '-' alone one input per line of standard input. An
    argument that is empty text (`predict RUN ""`, an unset shell variable) is refused: there is nothing to answer."""
    if list(inputs) != ["-"]:
        for number, item in enumerate(inputs, 1):
            if not item.strip():
                raise UserError(f"{command}: INPUTS[{number}] is empty text ({item!r}); give a file, or text to "
                                f"{command} on (one sentence per argument for a tagger)")
        return list(inputs)
    items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not items:
        raise UserError(f"{command} -: standard input held no lines to {command} on; pipe one input per line, or "
                        f"give INPUTS (files or text) as arguments")
    return items
