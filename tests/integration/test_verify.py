"""The verify sweep end to end: a real worker with beat, PostgreSQL, RabbitMQ and the sandbox over
HTTP; the Market's stock changed behind the service's back through the sandbox's controls."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
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
    database_url: str, sandbox: MarketSandbox, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`stocksync verify *args`; `settings` are STOCKSYNC_* by suffix (`v3_campaigns=…`)."""
    env = service_env(
        database_url,
        "memory://",
        STOCKSYNC_MARKET_BASE_URL=sandbox.url,
        STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
        **{f"STOCKSYNC_{k.upper()}": v for k, v in settings.items()},
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
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **FAST):
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
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **FAST):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        sandbox.lose_updates(CAMPAIGN, count=1)  # the next PUT: 200, applied nothing
        put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": "K0003", "count": 777}])
        wait_for("the lost update to be acknowledged", lambda: pending_keys(engine) == 0, 30)
        assert counts_at(sandbox, CAMPAIGN)["K0003"] == 4  # the Market kept the old count
        # Within a period (18 s) plus a drain and the worker's start.
        wait_for(
            "the lost update repaired",
            lambda: counts_at(sandbox, CAMPAIGN).get("K0003") == 777,
            18 + 25,
        )
    found = drifts(engine)
    assert [(r.sku, r.kind, r.market_count, r.our_value, r.repaired) for r in found] == [
        ("K0003", "count", 4, 777, True)
    ]


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
