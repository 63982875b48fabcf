"""This process's resources, built once from the settings: the one cache of the worker.

The engine, the rate limiter, the claims, campaign health and the Market client are built on
first use and kept in `_resources`. Celery's prefork pool forks children from the main process:
a child must not share the parent's sockets, so the cache belongs to the process that built it
and a forked child, seeing another pid, builds its own (`_once`, the one place that checks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from domain.route import Routing, V3Destination
from worker.campaign_health import CampaignHealth
from worker.claims import Claims
from worker.database import database_url, make_engine, session_attrs
from worker.market_client import MarketClient
from worker.rate_limiter import RateLimiter
from worker.settings import Settings, get_settings
from worker.verify import StockReader, V2Reader, V3Reader, Verifier

T = TypeVar("T")


@dataclass
class _Resources:
    """What one process has built so far, by name."""

    pid: int
    built: dict[str, object] = field(default_factory=dict)


_resources = _Resources(pid=os.getpid())


def _once(name: str, build: Callable[[], T]) -> T:
    """This process's `name`, built on first use; a forked child starts with none of its
    parent's."""
    global _resources  # noqa: PLW0603 - the one per-process cache, replaced after a fork
    if _resources.pid != os.getpid():
        _resources = _Resources(pid=os.getpid())
    if name not in _resources.built:
        _resources.built[name] = build()
    return cast(T, _resources.built[name])


def engine() -> Engine:
    """This process's engine (a small pool) for the configured database."""
    url = database_url(get_settings())
    return _once(f"engine {url}", lambda: make_engine(url))


def consumer_engine() -> Engine:
    """The engine of Celery's consumer, which runs in the main process and forks the pool's
    children: it keeps no pooled connection a child could inherit. Unreadable messages are rare;
    a connection each is cheap."""
    url = database_url(get_settings())
    return _once(
        "consumer_engine",
        lambda: create_engine(
            url, poolclass=NullPool, connect_args={"connect_timeout": 5, **session_attrs(url)}
        ),
    )


def routed() -> None:
    """The configured routing applied to the stored keys (worker/routes.py), once per process:
    at worker start, or by the process's first task when PostgreSQL was unreachable then."""
    from worker.routes import apply_routes

    settings = get_settings()
    v3 = {c: (t.business_id, t.warehouse_id) for c, t in settings.v3_campaigns.items()}
    _once("routed", lambda: apply_routes(engine(), settings.warehouse_groups, v3))


def limiter() -> RateLimiter:
    """The rate limiter every push of this process asks before a request."""
    settings = get_settings()
    return _once(
        "limiter",
        lambda: RateLimiter(
            engine(),
            settings.rate_limit_skus_per_minute,
            settings.max_parallel_requests_per_campaign,
            read_budget(settings),
            settings.v3_requests_per_minute,
            v3_read_requests_per_minute=v3_read_budget(settings),
            request_deadline_seconds=request_deadline(settings),
        ),
    )


def routing() -> Routing:
    """The configured v3 campaigns: which keys go by v3, to which business and warehouse."""
    settings = get_settings()
    return _once(
        "routing",
        lambda: Routing(
            {
                campaign: V3Destination(target.business_id, target.warehouse_id)
                for campaign, target in settings.v3_campaigns.items()
            }
        ),
    )


def request_deadline(settings: Settings) -> float:
    """How long the limiter counts a Market request without an answer as in flight
    (`Settings.request_deadline_seconds`)."""
    return settings.request_deadline_seconds


def read_budget(settings: Settings) -> int:
    """Offers a minute the sweep may read per campaign: its share of the read limit."""
    return max(1, int(settings.verify_read_limit_per_minute * settings.verify_read_share))


def v3_read_budget(settings: Settings) -> int:
    """v3 reads a minute the sweep may make per business: its share of the v3 read limit."""
    return max(1, int(settings.verify_v3_read_limit_per_minute * settings.verify_read_share))


def verifier() -> Verifier:
    """The verify sweep: a v3 campaign (STOCKSYNC_V3_CAMPAIGNS) read by v3, every other by v2."""
    settings = get_settings()

    def build() -> Verifier:
        v2 = V2Reader(engine(), market_client(), settings.verify_stock_type)
        v3 = V3Reader(market_client(), settings.verify_stock_type, routing())
        by_v3 = routing().v3

        def reader_of(campaign_id: int) -> StockReader:
            return v3 if campaign_id in by_v3 else v2

        return Verifier(
            engine(), limiter(), reader_of, settings.verify_hours * 3600, routing=routing()
        )

    return _once("verifier", build)


def claims() -> Claims:
    """The drain's and the pushes' claims on pending keys."""
    settings = get_settings()
    return _once(
        "claims",
        lambda: Claims(
            engine(),
            limiter(),
            settings.claim_lease_seconds,
            settings.refresh_hours * 3600,
            routing(),
        ),
    )


def campaign_health() -> CampaignHealth:
    """Parking and degrading campaigns."""
    return _once("campaign_health", lambda: CampaignHealth(engine()))


def market_client() -> MarketClient:
    """The Market client of this process; a forked child opens its own connections."""
    settings = get_settings()
    return _once(
        "market_client",
        lambda: MarketClient(
            settings.market_base_url,
            settings.market_api_key,
            settings.market_oauth_token,
            settings.market_timeout_seconds,
        ),
    )
