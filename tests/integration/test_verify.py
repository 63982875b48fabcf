"""The verify sweep end to end: a real worker with beat, PostgreSQL, RabbitMQ and the sandbox over
HTTP; the Market's stock changed behind the service's back through the sandbox's controls."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    SECRET_KEY,
    counts_at,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.services import ROOT, service_env, wait_for

pytestmark = pytest.mark.slow

CAMPAIGN = 7
# Short timings: a round reads every key within 90 % of 18 s; beat starts a pass every 0.5 s.
FAST = {"verify_hours": "0.005", "verify_interval_seconds": "0.5"}


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=1) as box:
        yield box


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params).all())


def one(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def acked(engine: Engine, n: int, campaign: int = CAMPAIGN) -> dict[str, int]:
    """`n` keys of the campaign put into the outbox; returns sku -> value."""
    values = {f"K{i:04d}": i + 1 for i in range(n)}
    put_changes(
        engine, [{"campaign_id": campaign, "sku": s, "count": v} for s, v in values.items()]
    )
    return values


def drifts(engine: Engine, campaign: int = CAMPAIGN) -> list[Any]:
    return rows(
        engine,
        "SELECT sku, kind, market_count, our_value, repaired FROM drift WHERE group_id = :c "
        "ORDER BY id",
        c=campaign,
    )


def run_verify(
    database_url: str, sandbox: MarketSandbox, *args: str
) -> subprocess.CompletedProcess[str]:
    env = service_env(
        database_url,
        "memory://",
        STOCKSYNC_MARKET_BASE_URL=sandbox.url,
        STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
    )
    return subprocess.run(
        [sys.executable, "-m", "stocksync", "verify", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_drift_of_50_keys_is_found_and_repaired_within_one_sweep(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    values = acked(engine, 200)
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", **FAST):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        changed = {sku: 5000 + i for i, sku in enumerate(sorted(values)[::4])}
        assert len(changed) == 50
        sandbox.drift(CAMPAIGN, changed)
        drifted_at = time.monotonic()
        # Within one period (18 s) plus a drain: every drift found, recorded and sent again.
        wait_for(
            "50 drifts found and repaired",
            lambda: len(drifts(engine)) == 50 and counts_at(sandbox, CAMPAIGN) == values,
            18 + 10,
        )
        took = time.monotonic() - drifted_at
    found = drifts(engine)
    assert {r.sku for r in found} == set(changed)
    assert all(r.kind == "count" and r.repaired for r in found)
    assert {r.sku: r.market_count for r in found} == changed
    assert {r.sku: r.our_value for r in found} == {s: values[s] for s in changed}
    totals = rows(
        engine,
        "SELECT drift_found_total, drift_repaired_total FROM campaign WHERE campaign_id = :c",
        c=CAMPAIGN,
    )[0]
    assert tuple(totals) == (50, 50)
    # The repair's updatedAt is no older than the drift's own at the Market.
    for sku in changed:
        entry = sandbox.state()[str(CAMPAIGN)][sku]
        assert entry["count"] == values[sku]
    assert took < 28


def test_a_lost_update_is_found_and_repaired(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    acked(engine, 20)
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", **FAST):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        sandbox.lose_updates(CAMPAIGN, count=1)  # the next PUT: 200, applied nothing
        put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": "K0003", "count": 777}])
        wait_for("the lost update to be acknowledged", lambda: pending_keys(engine) == 0, 30)
        assert counts_at(sandbox, CAMPAIGN)["K0003"] == 4  # the Market kept the old count
        wait_for(
            "the lost update repaired",
            lambda: counts_at(sandbox, CAMPAIGN).get("K0003") == 777,
            30,
        )
    found = drifts(engine)
    assert [(r.sku, r.kind, r.market_count, r.our_value, r.repaired) for r in found] == [
        ("K0003", "count", 4, 777, True)
    ]


def test_a_key_rewritten_by_someone_else_keeps_drifting_after_its_fourth_drift_and_is_left_alone(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    acked(engine, 10)
    stop = threading.Event()

    def other_writer() -> None:  # another integration writing the same SKU every half second
        n = 0
        while not stop.wait(0.5):
            n += 1
            sandbox.drift(CAMPAIGN, {"K0005": 9000 + n})

    fast = {"verify_hours": "0.002", "verify_interval_seconds": "0.3"}  # a round per 6.5 s
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", **fast):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        writer = threading.Thread(target=other_writer, daemon=True)
        writer.start()
        try:
            wait_for("a fourth drift", lambda: len(drifts(engine)) >= 4, 90)
            fourth = time.monotonic()
            # Left alone: not pending, not sent again, for two more rounds.
            time.sleep(13)
            assert pending_keys(engine) == 0
        finally:
            stop.set()
            writer.join()
        found = drifts(engine)
        assert {r.sku for r in found} == {"K0005"}
        assert [r.repaired for r in found[:4]] == [True, True, True, False]
        assert not any(r.repaired for r in found[4:])
        assert counts_at(sandbox, CAMPAIGN)["K0005"] > 9000  # the other writer's, not ours
        assert time.monotonic() - fourth >= 13
        figures = rows(
            engine,
            "SELECT drift_found_total, drift_repaired_total FROM campaign WHERE campaign_id = :c",
            c=CAMPAIGN,
        )[0]
        assert figures.drift_repaired_total == 3
        assert figures.drift_found_total == len(found)
        # `stocksync resync --drifting` sends ours on demand.
        env = service_env(database_url, rabbit_url)
        resync = subprocess.run(
            [
                sys.executable,
                "-m",
                "stocksync",
                "resync",
                "--campaign",
                str(CAMPAIGN),
                "--drifting",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert resync.returncode == 0, resync.stderr
        assert "1 key will be sent again" in resync.stdout
        wait_for("our value sent again", lambda: counts_at(sandbox, CAMPAIGN)["K0005"] == 6, 30)


def test_pending_and_in_flight_keys_are_never_reported_as_drift(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    acked(engine, 300)
    sandbox.configure(latency_ms=300, latency_jitter_ms=300)  # pushes stay in flight a while
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", **FAST):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        # A stream of changes for 20 s while the sweep runs: the Market lags behind every one.
        deadline = time.monotonic() + 20
        n = 0
        while time.monotonic() < deadline:
            n += 1
            put_changes(
                engine,
                [
                    {"campaign_id": CAMPAIGN, "sku": f"K{(n * 7 + j) % 300:04d}", "delta": 1}
                    for j in range(5)
                ],
            )
            time.sleep(0.2)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        checked = one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
    assert checked > 0  # the sweep did read meanwhile
    assert drifts(engine) == []


def test_a_key_changed_after_its_read_is_not_recorded_as_drift(
    engine: Engine, sandbox: MarketSandbox
) -> None:
    """The record-time check alone, on real PostgreSQL: the read saw a stale count, but the key
    changed (pending) or was claimed before the result was recorded."""
    from worker.rate_limiter import RateLimiter
    from worker.verify import ReadOutcome, SweepResult, Verifier

    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": s, "count": 1} for s in ("A", "B", "C")])
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE stock SET acked_version = version, acked_value = value, "
                "acked_at = clock_timestamp() - interval '1 minute'"
            )
        )
        conn.execute(text("INSERT INTO campaign (campaign_id) VALUES (:c)"), {"c": CAMPAIGN})
    verifier = Verifier(engine, RateLimiter(engine, 100, 2), lambda c: None, 3600)  # type: ignore[arg-type,return-value]
    read_started = verifier.now()
    # Between the read and its record: A changes, B is claimed by a push, C stays.
    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": "A", "count": 2}])
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO push_claim (claim_id, campaign_id, skus, lease_until) "
                "VALUES ('c1', :c, 1, clock_timestamp() + interval '1 minute')"
            ),
            {"c": CAMPAIGN},
        )
        conn.execute(
            text("INSERT INTO claimed_key (group_id, sku, claim_id) VALUES (:c, 'B', 'c1')"),
            {"c": CAMPAIGN},
        )
    from domain.stock_read import check_keys

    checks = check_keys([("A", 1), ("B", 1), ("C", 1)], {})  # the Market holds none of them
    _ = ReadOutcome
    out = SweepResult()
    verifier._record(CAMPAIGN, checks, read_started, False, out)
    assert [(r.sku, r.kind) for r in drifts(engine)] == [("C", "missing")]
    assert out.drifted_skus == ["C"]


def test_sending_goes_first_and_both_limits_hold_while_a_backlog_is_sent(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(read_offers_per_minute=3000, latency_ms=50)
    acked(engine, 3000)
    limits = {
        **FAST,
        "verify_read_limit_per_minute": "3000",
        "verify_read_share": "0.5",  # 1,500 offers a minute
        "max_parallel_requests_per_campaign": "2",
        "rate_limit_skus_per_minute": "100000",
    }
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", **limits):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        wait_for(
            "the sweep to read",
            lambda: (
                one(
                    engine,
                    "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c",
                    c=CAMPAIGN,
                )
                > 0
            ),
            30,
        )
        backlog_at = datetime.now(UTC)
        put_changes(
            engine,
            [{"campaign_id": CAMPAIGN, "sku": f"B{i:05d}", "count": i} for i in range(12_000)],
        )
        wait_for("the backlog to be sent", lambda: pending_keys(engine) == 0, 90)
        sent_at = datetime.now(UTC)
        time.sleep(3)
    reads = requests.get(
        f"{sandbox.url}/_sandbox/read-requests", params={"campaign": CAMPAIGN}, timeout=10
    ).json()["requests"]
    stats = sandbox.read_stats()["campaigns"][str(CAMPAIGN)]
    assert stats["rate_limited"] == 0  # the Market's read limit never hit
    assert not any(r["parallel_limited"] for r in reads)
    assert all(r["status"] != 420 for r in sandbox.requests(CAMPAIGN))  # nor the parallel one
    assert stats["max_in_window"] <= 1500  # the sweep kept to its share
    # Sending first: no read started while the backlog was pending (one already in flight at
    # its start may finish).
    started = [datetime.fromisoformat(r["started_at"]) for r in reads]
    during = [t for t in started if backlog_at < t < sent_at]
    assert len(during) <= 1, during


def test_the_returns_warehouse_is_ignored(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    accounts = {
        "businesses": [
            {
                "id": 901,
                "campaigns": [{"id": CAMPAIGN, "warehouses": [{"id": 7001}]}],
            }
        ]
    }
    with MarketSandbox(
        port=0,
        api_keys=[SECRET_KEY],
        accounts=accounts,
        warehouse_ids={str(CAMPAIGN): 7001},
        returns_warehouse_campaigns=[CAMPAIGN],
    ) as box:
        acked(engine, 100)
        with running_worker(database_url, rabbit_url, box, tmp_path / "w.log", **FAST):
            wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
            wait_for(
                "a full sweep",
                lambda: one(
                    engine,
                    "SELECT last_full_sweep_at IS NOT NULL AND keys_checked_total >= 100 "
                    "FROM campaign WHERE campaign_id = :c",
                    c=CAMPAIGN,
                ),
                40,
            )
        assert drifts(engine) == []  # the returns warehouse's other counts were not compared
        assert (
            one(engine, "SELECT warehouse_id FROM campaign WHERE campaign_id = :c", c=CAMPAIGN)
            == 7001
        )
        # Its own warehouse drifting is still found.
        box.drift(CAMPAIGN, {"K0001": 55})
        result = run_verify(database_url, box, "--campaign", str(CAMPAIGN), "--json")
        assert result.returncode == 2, result.stderr
        assert json.loads(result.stdout)["campaigns"][0]["drifted_skus"] == ["K0001"]


def test_a_420_on_reading_delays_the_sweep_and_nothing_else(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    acked(engine, 600)
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", **FAST):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        sandbox.configure(read_offers_per_minute=100)  # every read of more offers gets a 420
        wait_for(
            "a read 420",
            lambda: one(
                engine,
                "SELECT verify_blocked_until IS NOT NULL FROM campaign WHERE campaign_id = :c",
                c=CAMPAIGN,
            ),
            30,
        )
        # Sending goes on at once while the sweep waits.
        put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": "K0001", "count": 4242}])
        wait_for("a change sent", lambda: counts_at(sandbox, CAMPAIGN).get("K0001") == 4242, 10)
        blocked = one(
            engine, "SELECT blocked_until FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
        assert blocked is None  # pushes were never blocked
        until = one(
            engine, "SELECT verify_blocked_until FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
        reads_then = sandbox.read_stats()["campaigns"][str(CAMPAIGN)]["requests"]
        time.sleep(3)
        reads_after = sandbox.read_stats()["campaigns"][str(CAMPAIGN)]["requests"]
        if until > datetime.now(UTC):
            assert reads_after == reads_then  # no read before the Market's -Until
    assert all(r["status"] == 200 for r in sandbox.requests(CAMPAIGN))
    assert drifts(engine) == []


def test_verify_json_figures_match_the_sandbox(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    values = acked(engine, 1200)
    # The worker sends (its own sweep off): `verify` reads, the worker sends the repairs.
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", verify_hours="0"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        skus = sorted(values)
        changed = {sku: 1 for sku in skus[10:17]}  # 7 another count
        dropped = skus[500:505]  # 5 missing
        sandbox.drift(CAMPAIGN, changed)
        sandbox.drop(CAMPAIGN, dropped)
        reads_before = sandbox.read_stats()["campaigns"].get(str(CAMPAIGN), {}).get("requests", 0)
        result = run_verify(database_url, sandbox, "--json")
        assert result.returncode == 2, result.stderr
        report = json.loads(result.stdout)
        assert report["checked"] == 1200
        assert report["drifted"] == {"missing": 5, "count": 7}
        assert report["repaired"] == 12
        assert report["still_drifting"] == 0
        assert report["campaigns"][0]["drifted_skus"] == sorted([*changed, *dropped])
        assert report["campaigns"][0]["complete"] is True
        reads = sandbox.read_stats()["campaigns"][str(CAMPAIGN)]
        assert reads["requests"] - reads_before == 3  # 500 + 500 + 200
        wait_for("the repairs sent", lambda: counts_at(sandbox, CAMPAIGN) == values, 30)
        # Repaired: a second verify finds nothing and exits 0.
        again = run_verify(database_url, sandbox, "--json")
    assert again.returncode == 0, again.stderr
    figures = json.loads(again.stdout)
    assert figures["drifted"] == {"missing": 0, "count": 0}
    assert figures["checked"] == 1200
