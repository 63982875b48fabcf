"""A running pipeline for drain tests: the sandbox, a real worker with embedded beat, RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from sqlalchemy import Engine, text

from domain.changes import Change
from sandbox.server import MarketSandbox
from tests import services
from tests.services import WorkerProcess
from worker.ingest import store_message

SECRET_KEY = "sk-test-4f1d9c7e-never-in-logs"


def put_changes(
    engine: Engine, changes: list[dict[str, Any]], groups: dict[int, int] | None = None
) -> None:
    """Commits changes straight into the outbox, as `stocks.submit` would."""
    now = datetime.now(UTC)
    accepted = [
        (
            i,
            Change(
                campaign_id=c["campaign_id"],
                sku=c["sku"],
                delta=c.get("delta"),
                count=c.get("count"),
                event_id=c.get("event_id"),
                occurred_at=c.get("occurred_at", now),
            ),
        )
        for i, c in enumerate(changes)
    ]
    mapping = groups or {}

    def group_of(campaign: int) -> int:
        return mapping.get(campaign, campaign)

    store_message(engine, uuid4().hex, accepted, [], group_of)


def pending_keys(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM stock WHERE version > acked_version")
            ).scalar_one()
        )


def counts_at(sandbox: MarketSandbox, campaign: int) -> dict[str, int]:
    state = sandbox.state().get(str(campaign), {})
    return {sku: entry["count"] for sku, entry in state.items()}


@contextmanager
def running_worker(
    database_url: str,
    broker_url: str,
    sandbox: MarketSandbox,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    **settings: str,
) -> Iterator[WorkerProcess]:
    """A worker with embedded beat pushing to `sandbox`; `settings` are STOCKSYNC_* by suffix,
    `extra_env` other variables (LD_PRELOAD …)."""
    with services.running_worker(
        database_url,
        broker_url,
        log_path,
        beat=True,
        STOCKSYNC_MARKET_BASE_URL=sandbox.url,
        STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
        STOCKSYNC_DRAIN_INTERVAL_SECONDS="0.5",
        **{f"STOCKSYNC_{k.upper()}": v for k, v in settings.items()},
        **(extra_env or {}),
    ) as worker:
        yield worker


def campaign_flag(engine: Engine, campaign: int, column: str) -> bool:
    """Whether the campaign's row has `column` (`parked_reason`, `degraded_reason`) set."""
    assert column in {"parked_reason", "degraded_reason"}
    with engine.connect() as conn:
        found = conn.execute(
            text(f"SELECT {column} FROM campaign WHERE campaign_id = :c"),
            {"c": campaign},
        ).scalar()
    return found is not None


def assert_no_request_before_until(requests: list[dict[str, Any]], wait: float = 1.0) -> None:
    """No request to a campaign between a 420 and its -Until: `wait` seconds after the answer,
    in whole seconds (RFC 822), as the sandbox sets it (`injected_420_wait_seconds`)."""
    blocked: dict[int, datetime] = {}
    for r in sorted(requests, key=lambda r: r["started_at"]):
        started = datetime.fromisoformat(r["started_at"])
        until = blocked.get(r["campaign"])
        assert until is None or started >= until, r
        if r["status"] == 420:
            ended = datetime.fromisoformat(r["ended_at"]) + timedelta(seconds=wait)
            blocked[r["campaign"]] = ended.replace(microsecond=0)
