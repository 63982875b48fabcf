"""The PostgreSQL edge: the URL, how an engine is built, what a lost connection means."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.logs import log_event
from worker.settings import Settings, get_settings

# While PostgreSQL is unreachable a message goes back to the broker after this pause, so that
# nothing is acknowledged before it is committed and the worker does not spin.
DATABASE_DOWN_PAUSE_SECONDS = 2.0


def database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    from worker.embedded_postgres import embedded_database_url

    return embedded_database_url(settings.data_dir)


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
    """An engine with a small pool and the session limits of `connect_args` (from `settings`,
    else the process's). No ping before each use (a round trip per message): a connection
    broken by a restart fails its statement, the task's message goes back to the broker, and
    the pool replaces the connection."""
    args = connect_args(settings or get_settings(), long_statements)
    return create_engine(url, pool_size=5, max_overflow=5, connect_args=args)


def is_lock_timeout(exc: DBAPIError) -> bool:
    """True when `exc` is PostgreSQL's lock_not_available (a lock timeout or NOWAIT)."""
    return getattr(exc.orig, "sqlstate", None) == "55P03"


def is_connection_problem(exc: DBAPIError) -> bool:
    """True when `exc` means PostgreSQL is unreachable (or the connection broke)."""
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def paused_while_down(exc: DBAPIError, log: logging.Logger, **fields: Any) -> bool:
    """True, after logging `database_unavailable` and a pause, when `exc` means PostgreSQL is
    unreachable (the caller then hands its message back); False for any other database error."""
    if not is_connection_problem(exc):
        return False
    log_event(log, logging.WARNING, "database_unavailable", **fields)
    time.sleep(DATABASE_DOWN_PAUSE_SECONDS)
    return True
