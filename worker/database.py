"""The PostgreSQL edge: the URL, how an engine is built, what a lost connection means."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from worker.logs import log_event
from worker.settings import Settings

# While PostgreSQL is unreachable a message goes back to the broker after this pause, so that
# nothing is acknowledged before it is committed and the worker does not spin.
DATABASE_DOWN_PAUSE_SECONDS = 2.0


def database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    from worker.embedded_postgres import embedded_database_url

    return embedded_database_url(settings.data_dir)


def make_engine(url: str) -> Engine:
    """An engine with a small pool. No ping before each use (a round trip per message): a
    connection broken by a restart fails its statement, the task's message goes back to the
    broker, and the pool replaces the connection."""
    return create_engine(url, pool_size=5, max_overflow=5)


def paused_while_down(exc: DBAPIError, log: logging.Logger, **fields: Any) -> bool:
    """True, after logging `database_unavailable` and a pause, when `exc` means PostgreSQL is
    unreachable (the caller then hands its message back); False for any other database error."""
    if not (isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated):
        return False
    log_event(log, logging.WARNING, "database_unavailable", **fields)
    time.sleep(DATABASE_DOWN_PAUSE_SECONDS)
    return True
