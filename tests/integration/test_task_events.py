"""Flower sees the tasks that carry stock, not the housekeeping (issue 11's Flower finding): a real
worker with embedded beat on RabbitMQ, and every event it and beat send captured with Celery's own
event receiver (`celery.events.Receiver`, what Flower uses)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from sandbox.server import MarketSandbox
from tests.integration.drain_support import SECRET_KEY, counts_at, running_worker
from tests.services import wait_for

pytestmark = pytest.mark.slow

HOUSEKEEPING = {"stocks.drain", "stocks.verify", "stocks.housekeeping", "stocks.check_routing"}


@contextmanager
def captured_events(app: Celery) -> Iterator[list[dict[str, Any]]]:
    """Every event on the broker's event exchange while the block runs."""
    events: list[dict[str, Any]] = []
    ready = threading.Event()
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})

        def capture() -> None:
            for _ in receiver.consume(limit=None, timeout=None, wakeup=False):
                ready.set()

        receiver.on_consume_ready = lambda *_, **__: ready.set()
        thread = threading.Thread(target=capture, daemon=True)
        thread.start()
        assert ready.wait(10), "the event receiver did not start"
        try:
            yield events
        finally:
            receiver.should_stop = True
            thread.join(10)


def test_drain_and_housekeeping_send_no_task_events_while_submit_and_push_do(
    database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    producer = Celery("events-test", broker=rabbit_url, set_as_current=False)
    with (
        MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=1) as sandbox,
        captured_events(producer) as events,
        running_worker(database_url, rabbit_url, sandbox, tmp_path / "worker.log") as worker,
    ):
        # Given a worker whose beat drains every 0.5 s, when one change arrives
        producer.send_task(
            "stocks.submit",
            kwargs={"changes": [{"campaign_id": 1001, "sku": "EV-1", "count": 3}]},
            queue="stocks.changes",
        )
        # Then it reaches the Market (a drain claimed it and a push sent it) ...
        wait_for("the change at the Market", lambda: counts_at(sandbox, 1001) == {"EV-1": 3}, 60)
        # ... and beat drained many times more while the events were captured
        wait_for("a few more drains", lambda: worker.log_text().count("stocks.drain") >= 6, 30)
        wait_for("the push's task-succeeded", lambda: _succeeded(events, "stocks.push"), 10)

    task_events = [e for e in events if e["type"].startswith("task-")]
    names = _names(events)
    named = {e["uuid"] for e in task_events if e.get("name")}
    assert {"stocks.submit", "stocks.push"} <= names
    assert names.isdisjoint(HOUSEKEEPING), names
    # No event without a name belongs to any other task (task-started/-succeeded carry no name).
    assert {e["uuid"] for e in task_events} <= named
    worker_side = {"task-received", "task-started", "task-succeeded"}
    for name, expected in (
        ("stocks.submit", worker_side),  # this producer sends no task-sent (Celery's default)
        ("stocks.push", {"task-sent", *worker_side}),  # sent by the drain, inside the worker
    ):
        kinds = {e["type"] for e in task_events if e["uuid"] in _uuids(events, name)}
        assert expected <= kinds, name


def _names(events: list[dict[str, Any]]) -> set[str]:
    return {e["name"] for e in events if e["type"].startswith("task-") and e.get("name")}


def _uuids(events: list[dict[str, Any]], name: str) -> set[str]:
    return {e["uuid"] for e in events if e.get("name") == name}


def _succeeded(events: list[dict[str, Any]], name: str) -> bool:
    uuids = _uuids(events, name)
    return any(e["type"] == "task-succeeded" and e["uuid"] in uuids for e in events)
