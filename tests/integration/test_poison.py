"""A message that kills its worker every time is set aside after a bounded number of deliveries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from tests.services import WorkerProcess, service_env

pytestmark = pytest.mark.slow


def test_a_poison_message_is_set_aside_and_the_next_one_is_applied(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    # Given a worker with a fault injector that makes any message with sku POISON kill it
    env = service_env(database_url, rabbit_url)
    worker = WorkerProcess(
        env, tmp_path / "w.log", extra_args=("-I", "tests.faults.poison", "-c", "1")
    ).start()
    try:
        producer = Celery(broker=rabbit_url)
        producer.send_task(
            "stocks.submit",
            kwargs={"changes": [{"campaign_id": 1, "sku": "POISON", "count": 1}]},
            queue="stocks.changes",
        )
        producer.send_task(
            "stocks.submit",
            kwargs={"changes": [{"campaign_id": 1, "sku": "FINE", "count": 2}]},
            queue="stocks.changes",
        )
        # When it has been delivered again and again
        deadline = time.monotonic() + 90
        rows: Sequence[Any] = []
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(
                    text("SELECT reason, raw FROM rejected WHERE position = -1")
                ).all()
                fine = conn.execute(text("SELECT value FROM stock WHERE sku = 'FINE'")).all()
            if rows and fine:
                break
            time.sleep(0.5)
    finally:
        worker.stop()
    # Then it is stored as unreadable with its content, and the queue moved on
    assert len(rows) == 1
    reason, raw = rows[0]
    assert reason.startswith("message: set aside after 6 deliveries")
    assert "POISON" in raw
    assert fine == [(2,)]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM stock WHERE sku = 'POISON'")).scalar() == 0
