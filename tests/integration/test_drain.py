"""The drain end to end: outbox → real worker with beat → real HTTP → the Market sandbox."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    SECRET_KEY,
    assert_no_request_before_until,
    campaign_flag,
    counts_at,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.services import wait_for

pytestmark = pytest.mark.slow


def test_changes_reach_the_sandbox_with_the_contracts_values(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given an inventory count, later deltas and a delta older than the count
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    put_changes(
        engine,
        [
            {"campaign_id": 7, "sku": "A", "count": 10, "occurred_at": t0},
            {"campaign_id": 7, "sku": "A", "delta": -3, "occurred_at": t0 + timedelta(minutes=1)},
            {"campaign_id": 7, "sku": "A", "delta": -100, "occurred_at": t0 - timedelta(minutes=1)},
            {"campaign_id": 7, "sku": "B", "delta": -4, "occurred_at": t0},
            {"campaign_id": 8, "sku": "A", "count": 0, "occurred_at": t0},
        ],
    )
    # When the worker drains
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    # Then the sandbox holds the formula's values, negatives sent as 0
    assert counts_at(sandbox, 7) == {"A": 7, "B": 0}
    assert counts_at(sandbox, 8) == {"A": 0}
    updated = datetime.fromisoformat(sandbox.state()["7"]["A"]["updatedAt"])
    assert updated == t0 + timedelta(minutes=1)


def test_2001_pending_skus_make_two_requests(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(2001)])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    ok = [r for r in sandbox.requests() if r["status"] == 200]
    assert sorted(r["skus"] for r in ok) == [1, 2000]
    assert len(counts_at(sandbox, 5)) == 2001


def test_long_skus_make_requests_under_512_kb(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    put_changes(
        engine, [{"campaign_id": 5, "sku": f"{i:05d}" + "ж" * 250, "count": 1} for i in range(2000)]
    )
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    requests = sandbox.requests()
    assert all(r["status"] == 200 for r in requests)
    assert len(requests) >= 2
    assert max(r["bytes"] for r in requests) <= 512 * 1024
    assert len(counts_at(sandbox, 5)) == 2000


def test_a_key_last_changed_two_days_ago_is_sent_with_an_accepted_updated_at(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    put_changes(
        engine,
        [
            {
                "campaign_id": 5,
                "sku": "OLD",
                "count": 3,
                "occurred_at": datetime.now(UTC) - timedelta(days=2),
            }
        ],
    )
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    assert counts_at(sandbox, 5) == {"OLD": 3}
    sent = datetime.fromisoformat(sandbox.state()["5"]["OLD"]["updatedAt"])
    assert datetime.now(UTC) - timedelta(hours=23, minutes=1) < sent < datetime.now(UTC)


def test_never_more_parallel_requests_than_allowed(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(latency_ms=300)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": 1} for i in range(6000)])
    with running_worker(
        database_url,
        rabbit_url,
        sandbox,
        tmp_path / "w.log",
        max_parallel_requests_per_campaign="1",
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
    stats = sandbox.stats()
    assert stats["campaigns"]["5"]["max_parallel_seen"] == 1
    assert stats["requests_by_status"].get("420", 0) == 0


def test_420_is_waited_out_and_nothing_is_lost(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a Market that answers 420 to everything for a while
    sandbox.configure(error_420_rate=1.0, injected_420_wait_seconds=1)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(300)])
    put_changes(engine, [{"campaign_id": 6, "sku": f"S{i}", "count": i} for i in range(300)])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("420s", lambda: sandbox.stats()["requests_by_status"].get("420", 0) >= 4, 30)
        # When it recovers
        sandbox.configure(error_420_rate=0.3)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 90)
    # Then everything arrived, and no request came before the Market's -Until
    assert counts_at(sandbox, 5) == {f"S{i}": i for i in range(300)}
    assert counts_at(sandbox, 6) == {f"S{i}": i for i in range(300)}
    assert_no_request_before_until(sandbox.requests())


def test_a_5xx_and_dropped_connection_storm_converges(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(error_500_rate=1.0)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(3000)])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("5xx", lambda: sandbox.stats()["requests_by_status"].get("500", 0) >= 5, 30)
        sandbox.configure(error_500_rate=0.3, drop_before_rate=0.1, drop_after_rate=0.1)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 120)
    assert counts_at(sandbox, 5) == {f"S{i}": i for i in range(3000)}


def test_one_refused_sku_leaves_the_other_1999_delivered_and_itself_parked(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(refuse_skus=["S777"])
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": 1} for i in range(2000)])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("all but the refused SKU delivered", lambda: pending_keys(engine) == 1, 60)
    delivered = counts_at(sandbox, 5)
    assert len(delivered) == 1999
    assert "S777" not in delivered
    with engine.connect() as conn:
        reason = conn.execute(
            text("SELECT parked_reason FROM stock WHERE sku = 'S777'")
        ).scalar_one()
    assert reason.startswith("400: ") and "S777" in reason


def test_401_parks_the_campaign_and_a_fixed_key_resumes_it(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.force_status(5, 401)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": 2} for i in range(50)])
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", probe_interval_seconds="1"
    ):
        wait_for("the campaign to be parked", lambda: campaign_flag(engine, 5, "parked_reason"), 30)
        assert pending_keys(engine) == 50
        sandbox.force_status(5, None)
        wait_for("the campaign to resume", lambda: pending_keys(engine) == 0, 30)
    assert len(counts_at(sandbox, 5)) == 50


def test_two_racing_workers_send_no_sku_twice_and_nothing_stale(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(latency_ms=50)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(10_000)])
    with (
        running_worker(database_url, rabbit_url, sandbox, tmp_path / "a.log"),
        running_worker(database_url, rabbit_url, sandbox, tmp_path / "b.log"),
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 90)
    stats = sandbox.stats()
    assert stats["skus_accepted"] == 10_000  # each SKU exactly once
    assert stats["stale_overwrites"] == 0
    assert counts_at(sandbox, 5) == {f"S{i}": i for i in range(10_000)}


def test_a_change_during_an_in_flight_push_is_delivered_afterwards(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(latency_ms=1500)
    put_changes(engine, [{"campaign_id": 5, "sku": "A", "count": 10}])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        wait_for("a push in flight", lambda: sandbox.stats()["in_flight"].get("5", 0) > 0, 30)
        put_changes(engine, [{"campaign_id": 5, "sku": "A", "delta": -4}])
        wait_for(
            "the newer value delivered",
            lambda: counts_at(sandbox, 5) == {"A": 6} and pending_keys(engine) == 0,
            30,
        )


def test_a_worker_killed_in_the_middle_of_a_push_delivers_after_the_lease(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(latency_ms=4000)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": 5} for i in range(10)])
    log = tmp_path / "w.log"
    with running_worker(database_url, rabbit_url, sandbox, log, claim_lease_seconds="3") as worker:
        wait_for("a push in flight", lambda: sandbox.stats()["in_flight"].get("5", 0) > 0, 30)
        worker.kill()
    sandbox.configure(latency_ms=0)
    with running_worker(database_url, rabbit_url, sandbox, log, claim_lease_seconds="3"):
        wait_for("delivery after the lease", lambda: pending_keys(engine) == 0, 60)
    assert counts_at(sandbox, 5) == {f"S{i}": 5 for i in range(10)}


def test_a_groups_skus_reach_only_its_first_campaign(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    groups = {1001: 1001, 1002: 1001}
    put_changes(
        engine,
        [
            {"campaign_id": 1002, "sku": "G", "count": 9},
            {
                "campaign_id": 1001,
                "sku": "G",
                "delta": -1,
                "occurred_at": datetime.now(UTC) + timedelta(seconds=1),
            },
        ],
        groups,
    )
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", warehouse_groups="[[1001, 1002]]"
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    assert counts_at(sandbox, 1001) == {"G": 8}
    assert "1002" not in sandbox.state()


def test_the_api_key_appears_in_no_log_line(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(error_500_rate=0.3, drop_before_rate=0.2)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": 1} for i in range(100)])
    log = tmp_path / "w.log"
    with running_worker(database_url, rabbit_url, sandbox, log, market_timeout_seconds="2"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
    text_of_log = log.read_text()
    assert "push campaign=5" in text_of_log  # the log is there, and speaks of pushes
    assert SECRET_KEY not in text_of_log


def test_drain_threads_do_not_share_claims(engine: Engine) -> None:
    """Overlapping drains in one database never claim one key twice (no worker needed)."""
    from worker.claims import Claims
    from worker.rate_limiter import RateLimiter

    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": 1} for i in range(5000)])
    box = Claims(engine, RateLimiter(engine, 1_000_000, 4), 60, refresh_after_seconds=20 * 3600)
    results: list[list[str]] = []

    def claim() -> None:
        results.append([c.claim_id for c in box.claim(5, 60)])

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        claimed = conn.execute(text("SELECT count(*), count(DISTINCT sku) FROM claimed_key")).one()
        in_claims = conn.execute(text("SELECT COALESCE(sum(skus), 0) FROM push_claim")).scalar_one()
    # Each key in at most one claim, and every pending key claimed once: 2,000 + 2,000 + 1,000.
    assert claimed[0] == claimed[1] == in_claims == 5000
    assert sorted(len(r) for r in results) == [0, 0, 0, 3]


def test_a_key_not_sent_for_the_refresh_age_is_sent_again(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a refresh age of 3.6 seconds and one delivered key
    put_changes(engine, [{"campaign_id": 5, "sku": "R", "count": 4}])
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", refresh_hours="0.001"
    ):
        wait_for("the first delivery", lambda: counts_at(sandbox, 5) == {"R": 4}, 30)
        first = sandbox.state()["5"]["R"]["accepted_at"]
        # When nothing changes for longer than that, it is sent again, with the same count
        wait_for("a refresh", lambda: sandbox.state()["5"]["R"]["accepted_at"] != first, 30)
    assert counts_at(sandbox, 5) == {"R": 4}
    assert sum(r["skus"] for r in sandbox.requests() if r["status"] == 200) >= 2


def test_a_request_slower_than_the_lease_is_not_overtaken_by_a_newer_value(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a claim lease of 2 s and a Market that takes 8 s over the first request
    sandbox.configure(latency_ms=8000)
    t0 = datetime.now(UTC) - timedelta(minutes=30)
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", claim_lease_seconds="2"
    ):
        put_changes(engine, [{"campaign_id": 5, "sku": "K", "count": 1, "occurred_at": t0}])
        wait_for("the slow request", lambda: sandbox.stats()["in_flight"] == {"5": 1}, 20)
        sandbox.configure(latency_ms=0)
        # When a newer count arrives while that request is on its way (longer than the lease)
        later = t0 + timedelta(minutes=1)
        put_changes(engine, [{"campaign_id": 5, "sku": "K", "count": 2, "occurred_at": later}])
        wait_for(
            "both counts delivered",
            lambda: pending_keys(engine) == 0 and not sandbox.stats()["in_flight"],
            40,
        )
    # Then the newer count is the Market's last word: the slow request was not overtaken
    assert counts_at(sandbox, 5) == {"K": 2}
    assert sandbox.stats()["stale_overwrites"] == 0
