"""The drain's promise under faults (issue 13): no stale overwrite by a request that outlived its
lease, held SKUs and parked campaigns on refreshes.

Real worker processes with embedded beat, RabbitMQ, PostgreSQL and the sandbox over HTTP.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    counts_at,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.services import faketime_env, shift_database_clock, wait_for

pytestmark = pytest.mark.slow


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _refusals_of(sandbox: MarketSandbox, campaign: int, sku: str) -> int:
    """Requests the sandbox refused because of `sku` (its 400 names it)."""
    return sum(
        1
        for r in sandbox.requests(campaign)
        if r["status"] == 400 and f"'{sku}'" in (r["first_error"] or "")
    )


def test_a_request_held_past_its_lease_never_overwrites_a_newer_count(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a count 40 whose request the Market holds 30 s (a `100 Continue` every second, so no
    # per-read timeout fires), and leases far shorter than that
    sandbox.configure(hold_requests=1, hold_seconds=30)
    put_changes(engine, [{"campaign_id": 7, "sku": "A", "count": 40}])
    with (
        running_worker(
            database_url, rabbit_url, sandbox, tmp_path / "a.log", claim_lease_seconds="3"
        ),
        running_worker(
            database_url, rabbit_url, sandbox, tmp_path / "b.log", claim_lease_seconds="3"
        ),
    ):
        wait_for(
            "the count 40 to be held at the sandbox",
            lambda: sandbox.stats()["in_flight"].get("7", 0) == 1,
            30,
        )
        held_since = time.monotonic()
        # When a newer count arrives while the old request is held
        put_changes(engine, [{"campaign_id": 7, "sku": "A", "count": 41}])
        # (the hold is over, whatever the client did, after 30 s)
        time.sleep(max(0.0, 31 - (time.monotonic() - held_since)))
        wait_for(
            "nothing in flight and nothing pending",
            lambda: not sandbox.stats()["in_flight"] and pending_keys(engine) == 0,
            30,
        )
        time.sleep(2)  # a push that would still send something has had its chance
    # Then the Market ends with the newer count
    assert counts_at(sandbox, 7) == {"A": 41}
    assert pending_keys(engine) == 0


@pytest.mark.parametrize("offset", ["+30s", "-30s"])
def test_a_worker_with_a_wrong_clock_sends_accepted_updated_at_that_never_go_back(
    offset: str,
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    sandbox: MarketSandbox,
    tmp_path: Path,
) -> None:
    # Given two workers, one whose host clock is 30 s off, and a producer whose clock runs
    # ahead (its occurred_at are a minute in the future, so the sending time is what counts)
    skus = [f"S{i}" for i in range(20)]
    with (
        running_worker(
            database_url,
            rabbit_url,
            sandbox,
            tmp_path / "skewed.log",
            extra_env=faketime_env(offset),
        ) as skewed,
        running_worker(database_url, rabbit_url, sandbox, tmp_path / "right.log") as right,
    ):
        # When the keys change again and again, each round sent by whichever worker claims it
        for round_ in range(12):
            ahead = datetime.now(UTC) + timedelta(minutes=1)
            put_changes(
                engine,
                [
                    {"campaign_id": 7, "sku": sku, "count": round_, "occurred_at": ahead}
                    for sku in skus
                ],
            )
            wait_for("the round to drain", lambda: pending_keys(engine) == 0, 30)
        skewed_log, right_log = skewed.log_text(), right.log_text()
    # Both workers sent (else the test proves nothing about the skewed one)
    assert "status=200" in skewed_log
    assert "status=200" in right_log
    stats = sandbox.stats()
    # Then no SKU was refused (none "in the future"), none is held
    refused = [r["first_error"] for r in sandbox.requests() if r["status"] != 200]
    assert stats["skus_refused"] == 0, refused
    assert _scalar(engine, "SELECT count(*) FROM stock WHERE parked_version IS NOT NULL") == 0
    # and no updatedAt went backwards for a key, nor stood after the Market's own clock
    assert stats["stale_overwrites"] == 0
    state = sandbox.state(7)
    assert {sku: e["count"] for sku, e in state.items()} == dict.fromkeys(skus, 11)
    for entry in state.values():
        assert datetime.fromisoformat(entry["updatedAt"]) <= datetime.fromisoformat(
            entry["accepted_at"]
        )


def test_updated_at_never_goes_back_for_a_key_when_the_database_clock_steps_back(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a key sent and acknowledged (its producer's clock runs ahead, so the sending time is
    # what counts)
    shift_database_clock(engine, database_url)
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
        ahead = datetime.now(UTC) + timedelta(minutes=1)
        put_changes(engine, [{"campaign_id": 7, "sku": "A", "count": 1, "occurred_at": ahead}])
        wait_for("the first count to drain", lambda: pending_keys(engine) == 0, 30)
        first = datetime.fromisoformat(sandbox.state(7)["A"]["updatedAt"])
        # When the database's clock steps back 30 s (an NTP correction) and the key changes
        with engine.begin() as conn:
            conn.execute(text("UPDATE clockshift.shift SET by = '-30 s'"))
        put_changes(engine, [{"campaign_id": 7, "sku": "A", "count": 2, "occurred_at": ahead}])
        wait_for("the second count to drain", lambda: pending_keys(engine) == 0, 30)
    # Then the Market has the new count with an updatedAt not earlier than the one before
    entry = sandbox.state(7)["A"]
    assert entry["count"] == 2
    assert datetime.fromisoformat(entry["updatedAt"]) >= first
    stats = sandbox.stats()
    assert stats["stale_overwrites"] == 0
    assert stats["skus_refused"] == 0


def test_a_sku_refused_on_a_refresh_is_held_and_not_sent_again(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given two acknowledged keys and refreshes every 1.8 s
    put_changes(
        engine,
        [{"campaign_id": 7, "sku": "BAD", "count": 1}, {"campaign_id": 7, "sku": "OK", "count": 2}],
    )
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", refresh_hours="0.0005"
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        # When the Market starts refusing one of them
        sandbox.configure(refuse_skus=["BAD"])
        wait_for("BAD refused on a refresh", lambda: _refusals_of(sandbox, 7, "BAD") >= 1, 30)
        wait_for(
            "BAD held",
            lambda: (
                _scalar(
                    engine,
                    "SELECT parked_reason FROM stock WHERE sku = 'BAD' AND parked_version > 0",
                )
                is not None
            ),
            10,
        )
        oks_before = sum(1 for r in sandbox.requests(7) if r["status"] == 200)
        time.sleep(9)  # five refresh ages, eighteen drain passes
        oks_after = sum(1 for r in sandbox.requests(7) if r["status"] == 200)
    # Then it was sent once, held, and not sent again; the other key kept being refreshed
    assert _refusals_of(sandbox, 7, "BAD") == 1
    assert oks_after > oks_before
    assert counts_at(sandbox, 7)["OK"] == 2


def test_a_campaign_parked_on_a_refresh_works_again_after_a_probe_without_a_change(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a campaign whose every key is acknowledged, refreshes every 1.8 s, probes every 2 s
    put_changes(engine, [{"campaign_id": 7, "sku": "A", "count": 5}])
    parked = "SELECT parked_reason FROM campaign WHERE campaign_id = 7"
    with running_worker(
        database_url,
        rabbit_url,
        sandbox,
        tmp_path / "w.log",
        refresh_hours="0.0005",
        probe_interval_seconds="2",
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        # When the Market answers 401 to a refresh, then works again
        sandbox.force_status(7, 401)
        wait_for("the campaign parked", lambda: _scalar(engine, parked) is not None, 30)
        sandbox.force_status(7, None)
        # Then a probe finds it works: un-parked within the probe interval (and a drain pass),
        # with no new change
        wait_for("the campaign to work again", lambda: _scalar(engine, parked) is None, 8)
    assert pending_keys(engine) == 0
    assert counts_at(sandbox, 7) == {"A": 5}
