"""What every command shares: discovering the installed plugins once, the error handling that turns a user error into
exit 2 and one message, the `--set KEY=VALUE` option, and INPUTS read from the arguments or standard input."""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import click

from deepcourse.errors import UserError


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
            load_plugins()  # once per process; a broken plugin is reported by name, never fatal
            return fn(*args, **kwargs)
        except UserError as exc:
            _fail(exc.render(), exc.exit_code)
        except Interrupted as exc:
            click.echo(f"deepcourse: {exc}. Continue with: deepcourse run --resume "
                       f"{exc.checkpoint.parent.parent if exc.checkpoint else '<run dir>'}", err=True)
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
    """INPUTS of `predict` and `explain`: the arguments, or with '-' alone one input per line of standard input."""
    if list(inputs) != ["-"]:
        return list(inputs)
    items = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not items:
        raise UserError(f"{command} -: standard input held no lines to {command} on; pipe one input per line, or "
                        f"give INPUTS (files or text) as arguments")
    return items
