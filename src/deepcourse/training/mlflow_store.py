"""Whether the MLflow store a run is to log to can be used, asked once, quickly, before the run's folder exists.

MLflow itself waits on a store that does not answer: an HTTP request times out after 120 s and is retried 7 times
with growing pauses, a database connection is retried 10 times over about 100 s, a server that accepts the
connection and never answers holds the run for as long as that. And a URI it cannot use at all (an unknown scheme,
a folder, which MLflow 3 no longer logs to, a database driver that is not installed) surfaces as a traceback from
deep inside Accelerate. So before a run directory is made the store is asked once, with a short timeout and no
retries: a store that cannot be used is a user error (exit 2) naming the URI, where it came from, and why.

The store is MLFLOW_TRACKING_URI when it is set, else a resumed run's own (its trackers.json), else deepcourse's
local store beside the runs (RUNS_ROOT/mlflow.db), which is not asked: it is made where the runs go, which the
command line has checked. The timeout is MLFLOW_HTTP_REQUEST_TIMEOUT when set, else PROBE_TIMEOUT_S; the run's own
requests later keep MLflow's settings.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import ParseResult, urlparse

from deepcourse.errors import UserError
from deepcourse.recipe.schema import Recipe
from deepcourse.rundir import files
from deepcourse.training.tracking import TRACKERS_FILE

PROBE_TIMEOUT_S = 10
PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
DRIVERS = {"postgresql": "pip install 'psycopg[binary]'", "mysql": "pip install mysqlclient, or pymysql with "
           "mysql+pymysql://", "mssql": "pip install pyodbc"}


def check_mlflow_store(recipe: Recipe, resumed: Path | None) -> None:
    """Refuse (UserError) an MLflow store the run could not log to, when train.trackers has mlflow."""
    if "mlflow" not in recipe.train.trackers:
        return
    chosen = chosen_store(resumed)
    if chosen is None:
        return
    uri, named, advice = chosen
    problem = store_problem(uri)
    if problem:
        raise UserError(f"{named}: MLflow cannot log there: {problem}; {advice}")


def chosen_store(resumed: Path | None) -> tuple[str, str, str] | None:
    """The store MLflow will log to, how a message names it (MLFLOW_TRACKING_URI, or a resumed run's trackers.json)
    and what to do if it cannot be used; None for deepcourse's local store."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        uri = os.environ["MLFLOW_TRACKING_URI"]
        return uri, f"MLFLOW_TRACKING_URI={uri!r}", ("correct it, start its server, or unset it to log into "
                                                     "RUNS_ROOT/mlflow.db")
    if resumed is not None:
        uri = files.read_json(resumed / TRACKERS_FILE, missing={}).get("mlflow_tracking_uri")
        if uri:
            return str(uri), f"{resumed / TRACKERS_FILE}: mlflow_tracking_uri {str(uri)!r} (the store this run " \
                             f"logged to)", "start its server, or set MLFLOW_TRACKING_URI to the store to log to now"
    return None


def store_problem(uri: str) -> str | None:
    """Why MLflow cannot log to `uri` (a phrase), or None: each kind of store asked in the way that cannot hang."""
    try:
        parsed = urlparse(uri)
        parsed.port  # noqa: B018 - parsing the port raises on one that is not a number
    except ValueError as exc:
        return f"not a valid URI ({exc})"
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite" or scheme in DRIVERS:
        missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
        if missing:
            return f"a database store needs the {' and '.join(missing)} package(s) (pip install 'deepcourse[mlflow]')"
    if scheme == "sqlite":
        return _sqlite_problem(uri)
    if scheme in DRIVERS:  # no host: the database's local socket
        return (_reachable(parsed, scheme) if parsed.hostname else None) or _database_problem(uri, scheme)
    if scheme in ("http", "https"):
        return _reachable(parsed, scheme) or _mlflow_problem(uri, parsed)
    return _mlflow_problem(uri, parsed)


def timeout_s() -> float:
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", PROBE_TIMEOUT_S))
    except ValueError:
        return PROBE_TIMEOUT_S


def _reachable(parsed: ParseResult, scheme: str) -> str | None:
    """A TCP connection to the server, within the timeout: refused, unknown host and silence are told apart."""
    host, port = parsed.hostname, parsed.port or PORTS[scheme]
    if not host:
        return "it names no host"
    try:
        socket.create_connection((host, port), timeout=timeout_s()).close()
    except socket.gaierror:
        return f"unknown host '{host}'"
    except TimeoutError:
        return f"{host}:{port} does not answer (no connection within {timeout_s():g} s)"
    except OSError as exc:
        return f"nothing accepts connections at {host}:{port} ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def _one_quick_request() -> Iterator[None]:
    """MLflow's HTTP requests, for the length of the probe: the timeout, and no retries unless the user set some."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(PROBE_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _mlflow_problem(uri: str, parsed: ParseResult) -> str | None:
    """Ask the store for one experiment, as the run's tracker will first ask it."""
    from mlflow import MlflowClient

    with _one_quick_request():
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - what MLflow says of the user's URI is the user's to fix
            return _said(str(exc), parsed)
    return None


def _said(text: str, parsed: ParseResult) -> str:
    """MLflow's error, in the few words that say what is wrong."""
    schemes = re.search(r"Supported URI schemes are: \[([^\]]*)\]", text)
    if schemes:
        return f"MLflow has no tracking store for the scheme '{parsed.scheme}:' (it knows: {schemes.group(1)})"
    if "MLFLOW_ALLOW_FILE_STORE" in text:
        return ("MLflow no longer logs to a folder unless MLFLOW_ALLOW_FILE_STORE=true; use a database such as "
                "sqlite:///PATH/mlflow.db")
    if "timed out" in text.lower():
        return (f"the server at {parsed.hostname}:{parsed.port or PORTS.get(parsed.scheme, '')} accepted the "
                f"connection but sent no answer within {timeout_s():g} s (MLFLOW_HTTP_REQUEST_TIMEOUT)")
    first = text.strip().splitlines()[0] if text.strip() else "MLflow could not use it"
    return first.split(". ")[0].rstrip(".")[:300]


def _database_problem(uri: str, scheme: str) -> str | None:
    """The driver is there and the database lets us in, in one try within the timeout."""
    import sqlalchemy

    timeout = {"mssql": "timeout"}.get(scheme, "connect_timeout")
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={timeout: max(1, int(timeout_s()))})
    except ImportError as exc:
        return f"its database driver is not installed ({exc}; {DRIVERS[scheme]})"
    except Exception as exc:  # noqa: BLE001 - sqlalchemy's ArgumentError and the like: the URI is the user's
        return f"not a database URI SQLAlchemy can use ({str(exc).splitlines()[0]})"
    try:
        engine.connect().close()
    except Exception as exc:  # noqa: BLE001 - the driver's errors (authentication, unknown database) are the user's
        return str(exc).strip().splitlines()[0][:300]
    finally:
        engine.dispose()
    return None


def _sqlite_problem(uri: str) -> str | None:
    """A SQLite file MLflow can create or open (it makes the missing folders above it)."""
    path = Path(uri.split(":///", 1)[1] if ":///" in uri else "")
    if not path.name:
        return "it names no database file (sqlite:///PATH/mlflow.db)"
    if path.is_dir():
        return f"{path} is a folder; name a database file in it (sqlite:///{path}/mlflow.db)"
    if not path.exists():
        folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot create {path}: '{folder}' is {'read-only' if folder.is_dir() else 'a file'} for this user"
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            db.execute("SELECT name FROM sqlite_master LIMIT 1")
    except sqlite3.Error as exc:
        return f"{path} is not a SQLite database ({exc})"
    if not os.access(path, os.W_OK):
        return f"{path} is read-only for this user"
    return None
