"""Where a study lives: Optuna's storage for a URL or a journal file, and the names the workers and the trials'
runs agree on (kept apart from `deepcourse.studies.study` so a trial's pruning callback loads only this).

A storage is the user's to name (`--storage`, or the study folder's journal), so every way it can be wrong ends in
a UserError naming the URL or path and what would work: an unknown scheme, a driver that is not installed, a server
that does not answer (asked with a timeout, never waited on), a file in a folder that does not exist or cannot be
written, a folder where a file should be, a file that is not a journal. A journal whose last record a crash cut
short is a valid journal: the torn record is dropped, with a warning, and the study goes on."""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepcourse.errors import UserError, did_you_mean

if TYPE_CHECKING:
    import optuna
    from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

PRUNED_FILE = "pruned.json"  # written into a run the study's pruner stopped (deepcourse.studies.pruning)
HEARTBEAT_S = 20
GRACE_S = 90
CREATE_TRIES = 5
CONNECT_TIMEOUT_S = 10  # a server that does not answer is an error after this long, not a hang
SCHEMES = ("postgresql", "mysql", "sqlite")
#: how to install the driver of each database, by the module SQLAlchemy failed to import
DRIVERS = {"psycopg": "pip install 'deepcourse[postgresql]'",
           "psycopg2": "pip install 'deepcourse[postgresql]' (psycopg 3, which a bare postgresql:// then uses), "
                       "or pip install psycopg2-binary",
           "MySQLdb": "pip install mysqlclient, or write mysql+pymysql:// and pip install pymysql",
           "pymysql": "pip install pymysql"}
JOURNAL = "study.log"  # a study folder's own storage, unless --storage names another
RECORD_START = b'{"op_code":'  # how Optuna writes every journal record
EXAMPLES = ("a storage is postgresql://user@host/db, mysql+pymysql://user@host/db, sqlite:///path/study.db, or a "
            "journal file's path")


def open_storage(url: str, where: str = "--storage", *, new: bool = True) -> optuna.storages.BaseStorage:
    """A journal file (a path, the embedded default) or a database URL (postgresql://, mysql://, sqlite:///).
    `where` names what gave the URL in messages (the option, the study.json that records it, or nothing for a study
    folder's own journal: its path says enough). Without `new` the storage holds a study already, so a journal file
    that is missing is an error, not a new file."""
    if "://" not in url:
        return _open_journal(Path(url), where, new)
    return _open_database(url, where)


def storage_of(record: Mapping[str, Any], folder: Path) -> str:
    """The storage a study.json or sweep.json records: a URL, or a journal path relative to the study's folder (the
    folder's own `study.log` unless --storage named another), so a folder that was moved or copied keeps its own
    journal. Records written before paths were relative name the folder's journal absolutely: a `study.log` named
    elsewhere while this folder has its own is this folder's, as it was before the folder moved."""
    recorded = str(record.get("storage") or JOURNAL)
    if "://" in recorded:
        return recorded
    path = Path(recorded)
    if path.is_absolute() and path.name == JOURNAL and (folder / JOURNAL).exists():
        path = Path(JOURNAL)
    return str((folder / path).absolute())


def absolute(url: str) -> str:
    """`url` with a relative journal or SQLite path made absolute, so every worker and every trial (whatever its
    working folder) opens the same file."""
    if "://" not in url:
        return str(Path(url).absolute())
    parsed = _parse(url, "--storage")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).absolute())).render_as_string(hide_password=False)
    return url


def shown(url: str) -> str:
    """The URL as messages may show it: without its password."""
    if "://" not in url:
        return _relative(Path(url))
    try:
        return _parse(url, "").render_as_string(hide_password=True)
    except UserError:
        return url


# -- journal files ----------------------------------------------------------------------------------------------
def _open_journal(path: Path, where: str, new: bool) -> optuna.storages.BaseStorage:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    named = " ".join(filter(None, (where, _relative(path))))
    _check_file(path, named, "journal file", "study.log")
    if not new and not path.exists():
        raise UserError(f"{named}: the study's journal is missing (deleted, or not copied with the study folder); "
                        f"put it back, or start a new study")
    backend = JournalFileBackend(str(path))
    _check_records(path, named)
    try:
        return optuna.storages.JournalStorage(backend)
    except (ValueError, KeyError, TypeError) as exc:  # records that parse but do not replay
        raise UserError(f"{named}: not an Optuna journal ({exc}); give the journal a study wrote, or the name of a "
                        f"new file") from None


def _relative(path: Path) -> str:
    """`path` as messages show it: relative to the working folder when it is under it."""
    try:
        return str(path.absolute().relative_to(Path.cwd())) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def _check_file(path: Path, named: str, what: str, example: str) -> None:
    """A storage file must be a file in an existing folder this process can write in (Optuna writes lock files and
    journal records beside it). `named`: the option and the value as the user wrote it."""
    if path.is_dir():
        raise UserError(f"{named}: is a folder; give a {what} in it, e.g. {path / example}")
    folder = path.parent
    if not folder.is_dir():
        why = "is a file" if folder.exists() else "does not exist"
        raise UserError(f"{named}: the folder '{folder}' {why}; create the folder, or give a {what} in an "
                        f"existing one")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{named}: cannot write in '{folder}' (the study writes its records and locks there); give "
                        f"a {what} in a folder you can write in")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise UserError(f"{named}: the file is read-only for this user; give a {what} you can write")


def _check_records(path: Path, named: str) -> None:
    """Every complete line of the journal is an Optuna record; a torn last record (a crash mid-write) is dropped
    under the journal's lock (a writer holds it while it appends: what is torn under it is a crash's)."""
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the last record is whole
    for number, line in enumerate(lines, start=1):
        _check_record(line, named, number)
    if not tail:
        return
    if not (tail.startswith(RECORD_START) or RECORD_START.startswith(tail)):
        raise UserError(f"{named}:{len(lines) + 1}: not an Optuna journal record; give the journal a study wrote, "
                        f"or the name of a new file")
    _drop_torn_tail(path, named)


def _check_record(line: bytes, named: str, number: int) -> None:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("op_code"), int):
        raise UserError(f"{named}:{number}: not an Optuna journal record; give the journal a study wrote (restore "
                        f"it from a copy), or the name of a new file")


def _drop_torn_tail(path: Path, named: str) -> None:
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            data = f.read()
            keep = data.rfind(b"\n") + 1
            if keep == len(data):
                return  # a writer finished its record while we waited for the lock
            f.truncate(keep)
    finally:
        lock.release()
    log.warning(f"{named}: its last record was cut short (a crash in the middle of a write); dropped it, "
                f"the study goes on from the records before it")


# -- databases --------------------------------------------------------------------------------------------------
def _parse(url: str, where: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise UserError(f"{where} {url}: not a storage URL ({exc}); {EXAMPLES}") from None


def _open_database(url: str, where: str) -> optuna.storages.BaseStorage:
    from sqlalchemy.exc import DBAPIError, IntegrityError, NoSuchModuleError, ProgrammingError

    parsed = _parse(url, where)
    name = parsed.render_as_string(hide_password=True)
    driven = _installed_driver(parsed)
    if driven is not parsed:
        parsed, url = driven, driven.render_as_string(hide_password=False)
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        scheme, _, driver = parsed.drivername.partition("+")
        what = f"unknown driver '{driver}' for {scheme}." if scheme in SCHEMES else \
            f"unknown database '{scheme}'.{did_you_mean(scheme, SCHEMES)}"
        raise UserError(f"{where} {name}: {what} {EXAMPLES[0].upper()}{EXAMPLES[1:]}") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        _check_sqlite(parsed, f"{where} {name}")
    for attempt in range(CREATE_TRIES):
        try:
            return _rdb_storage(url, parsed, backend)
        except ImportError as exc:
            module = getattr(exc.__cause__, "name", None) or parsed.get_driver_name()
            raise UserError(f"{where} {name}: the database driver '{module}' is not installed: "
                            f"{DRIVERS.get(module, f'pip install {module}')}") from None
        except (IntegrityError, ProgrammingError) as exc:
            # Workers started together on an empty database race to create Optuna's tables ("already exists");
            # the loser finds them made on its next try.
            if attempt == CREATE_TRIES - 1:
                raise _unusable(exc, name, where, backend) from None
            import time

            time.sleep(0.5 * (attempt + 1))
        except DBAPIError as exc:
            raise _unusable(exc, name, where, backend) from None
    raise AssertionError("unreachable")


def _installed_driver(parsed: URL) -> URL:
    """A bare postgresql:// is psycopg2 to SQLAlchemy 2.0 and psycopg 3 from 2.1 on. Where psycopg 3 is installed
    (what `deepcourse[postgresql]` installs) and psycopg2 is not, the URL names psycopg 3, so it opens whichever
    SQLAlchemy the environment holds (2.0: "Failed to import DB access module"). Only how this process opens the
    storage changes: the study records the URL as the user wrote it, for workers whose drivers may differ."""
    if parsed.drivername != "postgresql" or _installed("psycopg2") or not _installed("psycopg"):
        return parsed
    return parsed.set(drivername="postgresql+psycopg")


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a driver is heavy)."""
    from importlib.util import find_spec

    try:
        return find_spec(module) is not None
    except ValueError:  # imported by hand without a spec: it is there
        return True


def _rdb_storage(url: str, parsed: URL, backend: str) -> optuna.storages.RDBStorage:
    import warnings

    import optuna

    engine: dict[str, Any] = {}
    if backend in ("postgresql", "mysql") and "connect_timeout" not in parsed.query:
        engine["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S)


def _check_sqlite(parsed: URL, named: str) -> None:
    if not parsed.database or parsed.database == ":memory:":
        raise UserError(f"{named}: an in-memory database is gone when its process ends, and every worker and trial "
                        f"would have its own; give a file, e.g. sqlite:///runs/study.db")
    _check_file(Path(parsed.database), named, "database file", "study.db")


def _unusable(exc: Exception, name: str, where: str, backend: str) -> UserError:
    """A database that refused us: the server's own first line says why (refused, timed out, no such database)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    fix = "give a database file a study wrote, or the name of a new file" if backend == "sqlite" else \
        ("check that the server runs and that the host, port, user, password and database are right (or leave out "
         "--storage: the study then keeps a journal file in its folder)")
    return UserError(f"{where} {name}: cannot use the database: {reason}; {fix}")
