"""Fixtures the integration tests share: the Market sandbox with the workers' key, a producer.

A module that needs another sandbox (other accounts, no key) defines its own `sandbox`, which
overrides this one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from sandbox.server import MarketSandbox
from tests.integration.drain_support import SECRET_KEY


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    """The Market sandbox over HTTP on a free port, accepting the key the workers are given."""
    with MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=1) as box:
        yield box


@pytest.fixture
def producer(rabbit_url: str) -> Iterator[Celery]:
    """Another service of the company: Celery with a broker URL, nothing of this project."""
    app = Celery(broker=rabbit_url)
    yield app
    app.close()
