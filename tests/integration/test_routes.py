"""A change of STOCKSYNC_WAREHOUSE_GROUPS between worker runs carries the keys over: real
producer, RabbitMQ, worker processes, PostgreSQL and the Market sandbox over HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.integration.drain_support import counts_at, pending_keys, running_worker
from tests.services import wait_for
from worker.routes import apply_routes

pytestmark = pytest.mark.slow


def _submit(producer: Celery, change: dict[str, object]) -> None:
    producer.send_task("stocks.submit", kwargs={"changes": [change]}, queue="stocks.changes")


def _applied(engine: Engine, changes: int) -> bool:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()) >= changes


def test_a_reordered_group_keeps_its_counts_and_sends_at_its_new_first_campaign(
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    sandbox: MarketSandbox,
    producer: Celery,
    tmp_path: Path,
) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    # Given a count of 40 taken and sent under [[1001, 1002]]
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w1.log", warehouse_groups="[[1001, 1002]]"
    ):
        _submit(
            producer, {"campaign_id": 1002, "sku": "R", "count": 40, "occurred_at": t0.isoformat()}
        )
        wait_for("the count to be stored", lambda: _applied(engine, 1), 30)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    assert counts_at(sandbox, 1001) == {"R": 40}
    since = sandbox.requests()[-1]["seq"]
    # When the worker restarts with the group reordered and a delta of -1 arrives
    later = (t0 + timedelta(minutes=1)).isoformat()
    log = tmp_path / "w2.log"
    with running_worker(database_url, rabbit_url, sandbox, log, warehouse_groups="[[1002, 1001]]"):
        _submit(producer, {"campaign_id": 1001, "sku": "R", "delta": -1, "occurred_at": later})
        wait_for("the delta to be stored", lambda: _applied(engine, 2), 30)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        wait_for("39 at campaign 1002", lambda: counts_at(sandbox, 1002) == {"R": 39}, 10)
    # Then the Market got 39 at the group's sending campaign, its first listed, never a 0
    assert {r["campaign"] for r in sandbox.requests(since=since)} == {1002}
    assert "keys_moved" in log.read_text()


def _keys(engine: Engine) -> dict[tuple[int, str], int]:
    with engine.connect() as conn:
        return {
            (g, s): v
            for g, s, v in conn.execute(text("SELECT group_id, sku, value FROM stock")).all()
        }


def test_merged_groups_keep_the_first_groups_key_and_a_leaving_campaign_gets_a_copy(
    engine: Engine,
) -> None:
    from tests.integration.drain_support import put_changes

    put_changes(
        engine,
        [
            {"campaign_id": 1001, "sku": "A", "count": 5},
            {"campaign_id": 1001, "sku": "BOTH", "count": 6},
            {"campaign_id": 2001, "sku": "BOTH", "count": 7},
            {"campaign_id": 2001, "sku": "B", "count": 8},
        ],
    )
    apply_routes(engine, [[1001], [2001]])
    # Two groups merged: the first listed keeps a SKU both had, the other's keys move over
    apply_routes(engine, [[1001, 2001]])
    assert _keys(engine) == {(1001, "A"): 5, (1001, "BOTH"): 6, (1001, "B"): 8}
    # A campaign leaving the group starts from the group's values, copied
    apply_routes(engine, [[1001]])
    assert _keys(engine) == {
        (1001, "A"): 5,
        (1001, "BOTH"): 6,
        (1001, "B"): 8,
        (2001, "A"): 5,
        (2001, "BOTH"): 6,
        (2001, "B"): 8,
    }
    assert pending_keys(engine) == 6
