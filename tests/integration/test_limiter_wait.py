"""The limiter's wait is measured (issue 10, item 4's "p99 wait for the limiter"): a push that
waits for its leave says how long, in its log line (`limiter_wait_ms`) and in the
`stocksync_limiter_wait_seconds` histogram. A real worker with beat, PostgreSQL, RabbitMQ and the
sandbox over HTTP; the campaign's one parallel slot is held by a request of "another worker" (a
row of `market_request` in flight) for HOLD_SECONDS after the push's keys were claimed."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.integration.drain_support import counts_at, pending_keys, put_changes, running_worker
from tests.integration.metrics_support import exposition, samples
from tests.services import wait_for

pytestmark = pytest.mark.slow

CAMPAIGN = 5
HOLD_SECONDS = 2.0
WAIT_LINE = re.compile(r"event=push .*limiter_wait_ms=(\d+)")
HISTOGRAM = "stocksync_limiter_wait_seconds"


def _claimed(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(text("SELECT count(*) FROM push_claim")).scalar_one())


@pytest.mark.timeout(120)
def test_a_push_that_waits_for_a_parallel_slot_logs_and_counts_its_wait(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a campaign whose only parallel slot another worker's request holds
    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": f"W-{i}", "count": i} for i in range(3)])
    with engine.begin() as conn:
        held = conn.execute(
            text(
                "INSERT INTO market_request (campaign_id, skus, started_at, kind) "
                "VALUES (:c, 1, clock_timestamp(), 'push') RETURNING id"
            ),
            {"c": CAMPAIGN},
        ).scalar_one()
    with running_worker(
        database_url,
        rabbit_url,
        sandbox,
        tmp_path / "w.log",
        max_parallel_requests_per_campaign="1",
    ) as worker:
        # When the keys are claimed and the slot is given back HOLD_SECONDS later
        wait_for("the claim", lambda: _claimed(engine), 60, 0.02)
        time.sleep(HOLD_SECONDS)
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE market_request SET finished_at = clock_timestamp() WHERE id = :id"),
                {"id": held},
            )
        wait_for("the keys delivered", lambda: pending_keys(engine) == 0, 30)
        log = worker.log_text()

    # Then the push's log line and the histogram both say it waited about HOLD_SECONDS
    assert counts_at(sandbox, CAMPAIGN) == {"W-0": 0, "W-1": 1, "W-2": 2}
    waits = [int(m.group(1)) for m in WAIT_LINE.finditer(log)]
    assert len(waits) == 1, waits
    assert HOLD_SECONDS * 1000 - 500 <= waits[0] <= HOLD_SECONDS * 1000 + 1500, waits
    found = samples(exposition(engine))
    campaign = (("campaign", str(CAMPAIGN)),)
    assert found[(f"{HISTOGRAM}_count", campaign)] == 1
    assert found[(f"{HISTOGRAM}_bucket", (*campaign, ("le", "1")))] == 0
    assert found[(f"{HISTOGRAM}_bucket", (*campaign, ("le", "5")))] == 1
    assert found[(f"{HISTOGRAM}_sum", campaign)] == pytest.approx(waits[0] / 1000, abs=0.002)
