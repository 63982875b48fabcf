"""The verify sweep under load and limits: a real worker with beat, PostgreSQL, RabbitMQ and the
sandbox over HTTP; the Market's stock changed behind the service's back through its controls."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    SECRET_KEY,
    counts_at,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.integration.metrics_support import exposition, samples
from tests.integration.test_verify import (
    FAST,
    acked,
    drifts,
    one,
    rows,
    run_verify,
)
from tests.services import ROOT, service_env, wait_for

pytestmark = pytest.mark.slow


CAMPAIGN = 7


def test_a_key_rewritten_by_someone_else_keeps_drifting_after_its_fourth_drift_and_is_left_alone(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    acked(engine, 10)  # K0005 is ours at 6
    fast = {"verify_hours": "0.001", "verify_interval_seconds": "0.3"}  # a round per 3.6 s
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **fast):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        # Another integration writes the SKU again each time our repair has landed.
        for n in range(1, 5):
            wait_for(
                f"ours at the Market ({n})", lambda: counts_at(sandbox, CAMPAIGN)["K0005"] == 6, 30
            )
            sandbox.drift(CAMPAIGN, {"K0005": 9000 + n})
            wait_for(f"drift {n} found", partial(lambda k: len(drifts(engine)) >= k, n), 30)
        sends_then = len([r for r in sandbox.requests(CAMPAIGN) if r.get("method") == "PUT"])
        # Left alone: not pending, not sent again, for two more rounds.
        time.sleep(8)
        assert pending_keys(engine) == 0
        assert counts_at(sandbox, CAMPAIGN)["K0005"] == 9004  # the other writer's, not ours
        sends_after = len([r for r in sandbox.requests(CAMPAIGN) if r.get("method") == "PUT"])
        assert sends_after == sends_then
        found = drifts(engine)
        assert {r.sku for r in found} == {"K0005"}
        assert [r.repaired for r in found[:4]] == [True, True, True, False]
        assert not any(r.repaired for r in found[4:])
        figures = rows(
            engine,
            "SELECT drift_found_total, drift_repaired_total FROM campaign WHERE campaign_id = :c",
            c=CAMPAIGN,
        )[0]
        assert figures.drift_repaired_total == 3
        assert figures.drift_found_total == len(found)
        # status and metrics show the sweep's figures per campaign (the sweep goes on meanwhile:
        # the key left alone is recorded again each round, so each figure is read between two
        # reads of the table)
        status = subprocess.run(
            [sys.executable, "-m", "stocksync", "status", "--json"],
            cwd=ROOT,
            env=service_env(database_url, rabbit_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        metrics = samples(exposition(engine))
        found_after = len(drifts(engine))
        (shown,) = [
            c for c in json.loads(status.stdout)["campaigns"] if c["campaign_id"] == CAMPAIGN
        ]
        assert shown["last_full_sweep_at"] is not None
        assert shown["keys_checked_last_day"] == 10
        assert len(found) <= shown["drift_found_total"] <= found_after
        assert (shown["drift_repaired_total"], shown["keeps_drifting"]) == (3, 1)
        label = (("campaign", str(CAMPAIGN)),)
        assert len(found) <= metrics[("stocksync_drift_found_total", label)] <= found_after
        assert metrics[("stocksync_drift_repaired_total", label)] == 3
        assert metrics[("stocksync_keeps_drifting_keys", label)] == 1
        checked = one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
        assert 10 <= metrics[("stocksync_verify_keys_checked_total", label)] <= checked
        swept_at = metrics[("stocksync_last_full_sweep_timestamp_seconds", label)]
        assert time.time() - 60 < swept_at <= time.time()
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
        assert "1 key" in resync.stdout, resync.stdout
        wait_for("our value sent again", lambda: counts_at(sandbox, CAMPAIGN)["K0005"] == 6, 30)


def test_pending_and_in_flight_keys_are_never_reported_as_drift(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    acked(engine, 300)
    sandbox.configure(latency_ms=150, latency_jitter_ms=150)  # pushes stay in flight a while
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **FAST):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        # A stream of changes, one every 0.2 s for 15 s, while the sweep runs: the Market lags
        # behind every one, and the sweep still reads in the slots sending leaves free.
        checked_before = one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
        for n in range(75):
            put_changes(
                engine,
                [
                    {"campaign_id": CAMPAIGN, "sku": f"K{(n * 7 + j) % 300:04d}", "delta": 1}
                    for j in range(5)
                ],
            )
            time.sleep(0.2)
        checked_while_sending = one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        checked = one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
    assert checked_while_sending > checked_before, "the sweep never read while changes came"
    assert checked > 0
    assert drifts(engine) == []


def test_sending_goes_first_and_both_limits_hold_while_a_backlog_is_sent(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # The sandbox's own parallel limit at the worker's setting: one request more gets a 420.
    sandbox.configure(read_offers_per_minute=3000, latency_ms=50, max_parallel_requests=2)
    acked(engine, 3000)
    limits = {
        **FAST,
        "verify_read_limit_per_minute": "3000",
        "verify_read_share": "0.5",  # 1,500 offers a minute
        "max_parallel_requests_per_campaign": "2",
        "rate_limit_skus_per_minute": "100000",
    }
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **limits):
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
        # The sweep goes on once the backlog is sent (after its own window, 1,500 a minute,
        # has room again: up to a minute when it was used up before the backlog).
        wait_for(
            "a read after the backlog",
            lambda: any(
                datetime.fromisoformat(r["started_at"]) > sent_at
                for r in requests.get(
                    f"{sandbox.url}/_sandbox/read-requests",
                    params={"campaign": CAMPAIGN},
                    timeout=10,
                ).json()["requests"]
            ),
            70,
        )
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
    puts = [
        datetime.fromisoformat(r["started_at"])
        for r in sandbox.requests(CAMPAIGN)
        if datetime.fromisoformat(r["started_at"]) > backlog_at
    ]
    assert len(puts) >= 6  # the backlog went in many requests (2,000 SKUs each at most)
    started = [datetime.fromisoformat(r["started_at"]) for r in reads]
    during = [t for t in started if min(puts) < t < max(puts)]
    assert len(during) <= 1, during
    assert any(t > max(puts) for t in started)  # the sweep went on once the backlog was sent


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
        with running_worker(database_url, rabbit_url, box, tmp_path / "w.log", None, **FAST):
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
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **FAST):
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
        assert until > datetime.now(UTC)  # the Market's window is a minute: still held back
        assert reads_after == reads_then  # no read before the Market's -Until
    assert all(r["status"] == 200 for r in sandbox.requests(CAMPAIGN))
    assert drifts(engine) == []


def verify_tasks(log: Path) -> list[str]:
    """How long each sweep pass of the worker's log took, and what it read."""
    return re.findall(r"stocks\.verify\[[^]]*\] succeeded in ([0-9.]+)s", log.read_text())


def test_sweep_passes_over_many_campaigns_leave_the_pool_to_sending(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given 6 campaigns of 6,000 acknowledged keys each, a slow Market (1 s an answer: each
    # campaign's pass reads for 12 s) and a sweep due at once (a round per 7 s, a pass a second)
    campaigns = range(31, 37)
    for campaign in campaigns:
        acked(engine, 6000, campaign)
    fast = {"verify_hours": "0.002", "verify_interval_seconds": "1"}
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **fast):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        sandbox.configure(latency_ms=1000)

        def reads() -> int:
            stats = sandbox.read_stats()["campaigns"]
            return sum(stats.get(str(c), {}).get("requests", 0) for c in campaigns)

        before = reads()
        time.sleep(6)  # the sweep's passes under way (beat sends one a second)
        # When a change comes while the sweep reads
        put_changes(engine, [{"campaign_id": 31, "sku": "NEW", "count": 9}])
        started = time.monotonic()
        # Then it reaches the Market within a drain and a (slow) push: the sweep's passes, one at
        # a time and bounded as a whole, never take every pool process
        wait_for("the new change sent", lambda: counts_at(sandbox, 31).get("NEW") == 9, 30)
        took = time.monotonic() - started
        assert reads() > before  # and the sweep did read meanwhile
    assert took < 8, (took, verify_tasks(tmp_path / "w.log"))
