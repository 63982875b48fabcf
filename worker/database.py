"""The PostgreSQL edge: the URL, how an engine is built, what a lost connection means."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.logs import log_event
from worker.settings import Settings

# While PostgreSQL is unreachable, or fails with an error that may pass (read-only, lock or
# statement timeout, deadlock), a message goes back to the broker after this pause, so that
# nothing is acknowledged before it is committed and the worker does not spin.
DATABASE_DOWN_PAUSE_SECONDS = 2.0


def database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    from worker.embedded_postgres import embedded_database_url

    return embedded_database_url(settings.data_dir)


# SQLSTATE classes and codes of errors that may pass: connection exceptions (08), transaction
# rollbacks (40: serialization failure, deadlock), insufficient resources (53: a full disk),
# operator intervention (57: statement timeout, shutdown), system errors (58), a lock timeout
# (55P03), a read-only session (25006: a demoted primary) and an idle-in-transaction timeout.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_CODES = ("55P03", "55006", "25006", "25P03")


def is_transient(exc: DBAPIError) -> bool:
    """True when the error may pass by itself (retry later); False when retrying cannot help."""
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:  # raised by the driver (no server answer): a connection problem
        return isinstance(exc, OperationalError | InterfaceError)
    return sqlstate.startswith(_TRANSIENT_CLASSES) or sqlstate in _TRANSIENT_CODES


def connect_args(url: str) -> dict[str, str]:
    """libpq options: only a read-write server is accepted, so after a failover a new connection
    finds the new primary (with a multi-host URL) or waits, instead of writing to a standby."""
    if "target_session_attrs" in make_url(url).query:
        return {}
    return {"target_session_attrs": "read-write"}


def make_engine(url: str) -> Engine:
    """An engine with a small pool. No ping before each use (a round trip per message): a
    connection broken by a restart fails its statement, the task's message goes back to the
    broker, and the pool replaces the connection; on a transient error the caller disposes of
    the pool (`is_transient`), which also drops sessions on a server turned read-only."""
    return create_engine(url, pool_size=5, max_overflow=5, connect_args=connect_args(url))


def paused_while_down(exc: DBAPIError, log: logging.Logger, **fields: Any) -> bool:
    """True, after logging `database_unavailable` and a pause, when `exc` may pass by itself
    (`is_transient`: the caller then hands its message back); False for any other error."""
    if not is_transient(exc):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or "none"
    log_event(log, logging.WARNING, "database_unavailable", sqlstate=sqlstate, **fields)
    time.sleep(DATABASE_DOWN_PAUSE_SECONDS)
    return True
