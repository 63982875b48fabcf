"""This process's resources, built once from the settings: the one cache of the worker.

The engine, the rate limiter, the claims, campaign health and the Market client are built on
first use and kept in `_resources`. Celery's prefork pool forks children from the main process:
a child must not share the parent's sockets, so the cache belongs to the process that built it
and a forked child, seeing another pid, builds its own (`_current`, the one place that checks).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from worker.campaign_health import CampaignHealth
from worker.claims import Claims
from worker.database import database_url, make_engine
from worker.market_client import MarketClient
from worker.rate_limiter import RateLimiter
from worker.settings import get_settings


@dataclass
class _Resources:
    """What one process has built so far; each field is filled on first use."""

    pid: int
    engine: Engine | None = None
    consumer_engine: Engine | None = None
    limiter: RateLimiter | None = None
    claims: Claims | None = None
    campaign_health: CampaignHealth | None = None
    market_client: MarketClient | None = None


_resources = _Resources(pid=os.getpid())


def _current() -> _Resources:
    """This process's resources; a forked child starts with none of its parent's."""
    global _resources  # noqa: PLW0603 - the one per-process cache, replaced after a fork
    if _resources.pid != os.getpid():
        _resources = _Resources(pid=os.getpid())
    return _resources


def engine() -> Engine:
    """This process's engine (a small pool)."""
    resources = _current()
    if resources.engine is None:
        resources.engine = make_engine(database_url(get_settings()))
    return resources.engine


def consumer_engine() -> Engine:
    """The engine of Celery's consumer, which runs in the main process and forks the pool's
    children: it keeps no pooled connection a child could inherit. Unreadable messages are rare;
    a connection each is cheap."""
    resources = _current()
    if resources.consumer_engine is None:
        resources.consumer_engine = create_engine(
            database_url(get_settings()), poolclass=NullPool, connect_args={"connect_timeout": 5}
        )
    return resources.consumer_engine


def limiter() -> RateLimiter:
    """The rate limiter every push of this process asks before a request."""
    resources = _current()
    if resources.limiter is None:
        settings = get_settings()
        resources.limiter = RateLimiter(
            engine(),
            settings.rate_limit_skus_per_minute,
            settings.max_parallel_requests_per_campaign,
        )
    return resources.limiter


def claims() -> Claims:
    """The drain's and the pushes' claims on pending keys."""
    resources = _current()
    if resources.claims is None:
        settings = get_settings()
        resources.claims = Claims(
            engine(), limiter(), settings.claim_lease_seconds, settings.refresh_hours * 3600
        )
    return resources.claims


def campaign_health() -> CampaignHealth:
    """Parking and degrading campaigns."""
    resources = _current()
    if resources.campaign_health is None:
        resources.campaign_health = CampaignHealth(engine())
    return resources.campaign_health


def market_client() -> MarketClient:
    """The Market client of this process; a forked child opens its own connections."""
    resources = _current()
    if resources.market_client is None:
        settings = get_settings()
        resources.market_client = MarketClient(
            settings.market_base_url,
            settings.market_api_key,
            settings.market_oauth_token,
            settings.market_timeout_seconds,
        )
    return resources.market_client
