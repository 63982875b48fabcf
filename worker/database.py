"""The PostgreSQL edge: the engine of this process, built once per process (Celery forks)."""

from __future__ import annotations

import os
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.settings import Settings, get_settings


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


@lru_cache(maxsize=4)
def _engine_for(pid: int, url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    """This process's engine; a forked child builds its own rather than share sockets."""
    return _engine_for(os.getpid(), database_url(get_settings()))
