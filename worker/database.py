"""The PostgreSQL edge: the URL, how an engine is built, what a lost connection means."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.logs import log_event
from worker.settings import Settings, SettingsError, get_settings

# While PostgreSQL is unreachable, or fails with an error that may pass (read-only, lock or
# statement timeout, deadlock), a message goes back to the broker after this pause, so that
# nothing is acknowledged before it is committed and the worker does not spin.
DATABASE_DOWN_PAUSE_SECONDS = 2.0


NOT_CONFIGURED = (
    "STOCKSYNC_DATABASE_URL is not set: set it to a PostgreSQL URL (postgresql+psycopg://…), "
    "or use `stocksync run`, which starts the embedded PostgreSQL"
)


def database_url(settings: Settings) -> str:
    """The configured URL; `SettingsError` (`NOT_CONFIGURED`) when there is none.

    The worker, beat and `celery -A worker …` never start a server of their own: only the
    `stocksync` commands do (stocksync/migrations_runner.resolve_database_url), and they hand the
    URL to the processes they start through the environment."""
    if settings.database_url:
        return settings.database_url
    raise SettingsError(NOT_CONFIGURED)


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


def session_attrs(url: str) -> dict[str, str]:
    """libpq options: only a read-write server is accepted, so after a failover a new connection
    finds the new primary (with a multi-host URL) or waits, instead of writing to a standby."""
    if "target_session_attrs" in make_url(url).query:
        return {}
    return {"target_session_attrs": "read-write"}


# Every statement of the service is a short OLTP statement on indexes: JIT compilation (tens to
# hundreds of milliseconds) can never pay for itself, and a cost estimate inflated by a planner
# switch once made PostgreSQL JIT-compile every claim (0.45 s per idle campaign).
NO_JIT = "-c jit=off"


def connect_args(settings: Settings, long_statements: bool = False) -> dict[str, Any]:
    """libpq parameters of every session: no JIT, connect timeout, TCP keepalives (a peer gone
    without a FIN is noticed in about a minute) and the statement, lock and idle-in-transaction
    timeouts.

    No `idle_session_timeout`: the embedded broker's consumer holds a session-level advisory lock
    on an idle session. `long_statements` (migrations, imports, pruning) drops the statement
    timeout only."""
    statement_ms = 0 if long_statements else _ms(settings.database_statement_timeout_seconds)
    options = (
        f"{NO_JIT} -c statement_timeout={statement_ms}"
        f" -c lock_timeout={_ms(settings.database_lock_timeout_seconds)}"
        " -c idle_in_transaction_session_timeout="
        f"{_ms(settings.database_idle_in_transaction_timeout_seconds)}"
    )
    return {
        "connect_timeout": settings.database_connect_timeout_seconds,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "options": options,
    }


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def make_engine(
    url: str, settings: Settings | None = None, *, long_statements: bool = False
) -> Engine:
    """An engine with a small pool, the session limits of `connect_args` (from `settings`, else
    the process's) and read-write servers only (`session_attrs`). No ping before each use (a
    round trip per message): a connection broken by a restart fails its statement, the task's
    message goes back to the broker, and the pool replaces the connection; on a transient error
    the caller disposes of the pool (`is_transient`), which also drops sessions on a server
    turned read-only."""
    args = {**connect_args(settings or get_settings(), long_statements), **session_attrs(url)}
    return create_engine(url, pool_size=5, max_overflow=5, connect_args=args)


def is_lock_timeout(exc: DBAPIError) -> bool:
    """True when `exc` is PostgreSQL's lock_not_available (a lock timeout or NOWAIT)."""
    return getattr(exc.orig, "sqlstate", None) == "55P03"


def paused_while_down(exc: DBAPIError, log: logging.Logger, **fields: Any) -> bool:
    """True, after logging `database_unavailable` and a pause, when `exc` may pass by itself
    (`is_transient`: the caller then hands its message back); False for any other error."""
    if not is_transient(exc):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or "none"
    log_event(log, logging.WARNING, "database_unavailable", **fields, sqlstate=sqlstate)
    time.sleep(DATABASE_DOWN_PAUSE_SECONDS)
    return True


def iso_instants(instants: Iterable[datetime | None]) -> list[str | None]:
    """Instants as ISO 8601 text for a `timestamptz[]` cast: psycopg's text dumping of a list of
    datetimes costs about 2.7 ms per 500, the largest Python cost of storing a big message and
    of acknowledging a 2,000-key batch."""
    # In UTC: PostgreSQL accepts offsets up to 15:59 only, ISO 8601 (and Python) up to 23:59.
    return [None if t is None else t.astimezone(UTC).isoformat() for t in instants]
