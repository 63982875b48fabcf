"""The PostgreSQL edge: the engine of this process, built once per process (Celery forks)."""

from __future__ import annotations

import os
from functools import lru_cache

from sqlalchemy import Engine, create_engine

from worker.settings import Settings, get_settings


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


@lru_cache(maxsize=4)
def _engine_for(pid: int, url: str) -> Engine:
    return make_engine(url)


def get_engine() -> Engine:
    """This process's engine; a forked child builds its own rather than share sockets."""
    return _engine_for(os.getpid(), database_url(get_settings()))
