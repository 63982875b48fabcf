"""Scraping the real collector over a real database; counted work done by the real code."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from domain.changes import Change, Rejection
from worker.claims import Claims
from worker.ingest import store_message, store_unreadable
from worker.market_client import MarketAnswer
from worker.metrics import StockFigures
from worker.rate_limiter import Permit, RateLimiter
from worker.settings import Settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposition(engine: Engine, settings: Settings | None = None) -> str:
    """One scrape of the collector, as the text `stocksync metrics` serves."""
    registry = CollectorRegistry()
    registry.register(StockFigures(engine, settings or Settings()))
    return generate_latest(registry).decode()


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client's own text parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def counted_work(engine: Engine, campaign: int = 5, tag: str = "w") -> None:
    """Work every counter counts, done by the code the workers run: an ingest with two accepted
    and one rejected change, an unreadable message, a 200 and a 420 through the limiter, and the
    acknowledgement of the claimed keys."""
    now = datetime.now(UTC)
    accepted = [(i, Change(campaign, f"{tag}-{i}", None, i, None, now)) for i in range(2)]
    rejected = [Rejection(2, {"campaign_id": campaign, "sku": ""}, "sku: is required")]
    store_message(engine, f"{tag}-task", accepted, rejected, lambda c: c)
    store_unreadable(engine, f"{tag}-unreadable", "garbage", "changes: must be a list")
    limiter = RateLimiter(engine, 100_000, 4)
    box = Claims(engine, limiter, 60, 86400)
    (claim,) = box.claim(campaign, 60)
    batch = box.read(campaign, claim.claim_id)
    permit = limiter.acquire(campaign, len(batch))
    assert isinstance(permit, Permit)
    limiter.finish(permit, MarketAnswer(420))
    with engine.begin() as conn:  # the 420's block is waited out
        conn.exec_driver_sql("UPDATE campaign SET blocked_until = NULL")
    permit = limiter.acquire(campaign, len(batch))
    assert isinstance(permit, Permit)
    limiter.finish(permit, MarketAnswer(200))
    box.acknowledge(campaign, claim.claim_id, batch)
    box.release(campaign, claim.claim_id)
