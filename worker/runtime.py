"""This process's edges, built once from the settings: outbox, rate limiter, Market client."""

from __future__ import annotations

import os
from functools import lru_cache

from worker.claims import Outbox
from worker.database import get_engine
from worker.market_client import MarketClient
from worker.rate_limiter import RateLimiter
from worker.settings import get_settings


@lru_cache(maxsize=2)
def _outbox(pid: int) -> Outbox:
    settings = get_settings()
    limiter = RateLimiter(
        get_engine(),
        settings.rate_limit_skus_per_minute,
        settings.max_parallel_requests_per_campaign,
        # A connect plus a read timeout, and a margin: past it no answer can come any more.
        request_deadline_seconds=2 * settings.market_timeout_seconds + 5,
    )
    return Outbox(
        get_engine(), limiter, settings.claim_lease_seconds, settings.refresh_hours * 3600
    )


@lru_cache(maxsize=2)
def _market_client(pid: int) -> MarketClient:
    settings = get_settings()
    return MarketClient(
        settings.market_base_url,
        settings.market_api_key,
        settings.market_oauth_token,
        settings.market_timeout_seconds,
    )


def outbox() -> Outbox:
    """The outbox (with its rate limiter) of this process."""
    return _outbox(os.getpid())


def market_client() -> MarketClient:
    """The Market client of this process; a forked child opens its own connections."""
    return _market_client(os.getpid())
