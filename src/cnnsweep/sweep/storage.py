"""A study's database seen from a worker: its URL as shown (password hidden), and patience while the
database is briefly unreachable.

A storage URL may carry a password (`postgresql://user:secret@host/db`). Whatever cnnsweep writes or
logs shows the URL through `shown_url`, which hides it: `postgresql://user:***@host/db`.

A worker on a network database (PostgreSQL, MySQL) waits out a short outage, such as a restarted
server or a dropped connection, instead of failing: each new connection is retried with doubling waits
(one warning line per wait) for up to `PATIENCE_S` seconds, and then the worker gives up with one line
(`StorageUnavailable`). Pooled connections are tested before each use (SQLAlchemy's `pool_pre_ping`),
so one that a restart broke is replaced through the same retries. Nothing is sent to the database
before its connection is made, so a retry never repeats a write. A refused password or an unknown
user or database fails at once: waiting would not change the answer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
import sqlalchemy
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError

log = logging.getLogger(__name__)

JOURNAL = "journal://"  # journal:///abs/path/study.log: Optuna's JournalStorage in that file (no server)

# How long a worker keeps retrying an unreachable database before it gives up. Within the default heartbeat
# grace (120 s) less one interval (60 s): an outage the workers wait out leaves no running trial looking lost.
PATIENCE_S = 60.0
FIRST_WAIT_S = 1.0  # the first wait between retries; each later one is twice the one before
CONNECT_TIMEOUT_S = 10  # seconds libpq waits for a server that does not answer (its default: forever)
# Words of connection errors that waiting does not cure (libpq's and MySQL's messages).
PERMANENT = ("authentication failed", "does not exist", "no pg_hba.conf entry", "no password supplied", "access denied")

Connection = TypeVar("Connection")


class StorageUnavailable(Exception):
    """The study's database refused the connection, or did not answer within PATIENCE_S; one line."""

    exit_code = 1


# What a failing database raises through optuna: the give-up above, optuna's wrapper of a statement's error
# (a connection that broke in the middle of one) and SQLAlchemy's own errors.
DATABASE_ERRORS = (StorageUnavailable, optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def shown_url(url: str) -> str:
    """The storage URL as cnnsweep writes and logs it: any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy can read: hide whatever sits where a password would
        return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def password_of(url: str) -> str | None:
    """The password a storage URL carries, if any."""
    try:
        return make_url(url).password
    except (ArgumentError, ValueError):
        return None


def is_network(url: str) -> bool:
    """Whether the storage is a database server (not a SQLite or journal file): one that can be briefly unreachable."""
    return not url.startswith(("sqlite", JOURNAL))


def engine_options(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a network database: test pooled connections before use, bound connects."""
    options: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return options


def wait_out_outages(engine: Engine, url: str, patience_s: float = PATIENCE_S) -> None:
    """Make every new connection of `engine` retry an unreachable database (see the module's note)."""
    unreachable = engine.dialect.dbapi.OperationalError  # PEP 249: the driver's class for connection errors

    def connect(dialect: Any, record: Any, cargs: tuple, cparams: dict[str, Any]) -> Any:
        return patiently(lambda: dialect.connect(*cargs, **cparams), url, (unreachable,), patience_s)

    sqlalchemy.event.listen(engine, "do_connect", connect)


def patiently(
    connect: Callable[[], Connection],
    url: str,
    unreachable: tuple[type[BaseException], ...],
    patience_s: float = PATIENCE_S,
) -> Connection:
    """Call `connect` until it stops raising one of `unreachable`, waiting 1, 2, 4, ... s in between,
    for up to `patience_s`; then (or at once, for a refusal waiting would not cure) StorageUnavailable."""
    began, wait, retried = time.monotonic(), FIRST_WAIT_S, False
    while True:
        try:
            connection = connect()
        except unreachable as error:
            reason = driver_message(error)
            if any(word in reason.lower() for word in PERMANENT):
                raise StorageUnavailable(
                    f"database {shown_url(url)} refused the connection: {reason}; check hydra.sweeper.storage"
                ) from error
            waited = time.monotonic() - began
            if waited >= patience_s:
                raise StorageUnavailable(
                    f"database {shown_url(url)} unreachable for {waited:.0f} s ({reason}); once it is up and "
                    "reachable from this host, rerun the same command to continue the study"
                ) from error
            pause = min(wait, patience_s - waited)
            log.warning(
                f"database {shown_url(url)} unreachable ({reason}); retrying in {pause:.0f} s "
                f"({waited:.0f} of {patience_s:.0f} s waited)"
            )
            time.sleep(pause)
            wait, retried = 2 * wait, True
        else:
            if retried:
                log.warning(f"database {shown_url(url)} reachable again after {time.monotonic() - began:.1f} s")
            return connection


def error_line(error: BaseException, url: str) -> str:
    """The error's first line, with `url` in it (an error about the URL itself quotes it) shown by `shown_url`."""
    return driver_message(error).replace(url, shown_url(url))


def driver_message(error: BaseException) -> str:
    """The driver's own message, first line: SQLAlchemy's wrapper adds the statement and a link, and
    optuna's StorageInternalError (raised from SQLAlchemy's error) a generic sentence."""
    if isinstance(error.__cause__, sqlalchemy.exc.DBAPIError):
        error = error.__cause__
    original = getattr(error, "orig", None) or error
    lines = str(original).strip().splitlines()
    return lines[0].strip() if lines else type(original).__name__
