"""Fixtures by cost: a PostgreSQL template migrated once per session and copied per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests import services
from worker.database import make_engine
from worker.settings import get_settings


@pytest.fixture(autouse=True)
def _clean_stocksync_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's STOCKSYNC_* variables; cached settings are rebuilt."""
    for name in list(os.environ):
        if name.startswith("STOCKSYNC_") and not name.startswith("STOCKSYNC_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(Path(__file__).parent)  # no .env file is read from the repository root
    # pytest-xdist's worker processes carry COLUMNS=80 and LINES=24: a child command would take
    # its pipe for an 80-column terminal (a test that wants a width sets COLUMNS itself).
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    name = services.create_migrated_template()
    yield name
    services.drop_database(name)


@pytest.fixture
def database_url(template_database: str) -> Iterator[str]:
    name = services.create_database_from(template_database)
    yield services.url_for_database(name)
    services.drop_database(name)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def rabbit_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost per test: no message of one test reaches another's worker."""
    with services.rabbit_vhost() as url:
        yield url
