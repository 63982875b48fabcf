"""A message is acknowledged only when its changes are committed or it is stored as unreadable
with the reason (issue 13, items 1 and 7): a real worker, RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine

from tests import services
from tests.integration.broker_support import (
    celery_headers,
    publish_raw,
    queue_counts,
    running_worker,
    scalar,
    unreadable_rows,
    wait_for,
)
from tests.services import WorkerProcess

pytestmark = pytest.mark.slow


def _database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


def _set_database(database_url: str, setting: str) -> None:
    """`ALTER DATABASE … SET/RESET`; open sessions are cut so that every new one sees it."""
    name = _database_name(database_url)
    services.admin_execute(f'ALTER DATABASE "{name}" {setting}')
    services.admin_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def _reset_database(database_url: str, setting: str) -> None:
    """`ALTER DATABASE … RESET`, leaving the worker's sessions alone: they must heal by
    themselves, as after a failover."""
    services.admin_execute(f'ALTER DATABASE "{_database_name(database_url)}" RESET {setting}')


@pytest.fixture
def producer(rabbit_url: str) -> Iterator[Celery]:
    app = Celery(broker=rabbit_url)
    yield app
    app.close()


def _stock_value(engine: Engine, sku: str) -> int | None:
    return scalar(engine, "SELECT max(value) FROM stock WHERE sku = :sku", sku=sku)


def test_a_change_sent_while_the_database_is_read_only_is_applied_once_it_is_writable(
    engine: Engine, database_url: str, rabbit_url: str, producer: Celery, tmp_path: Path
) -> None:
    # Given a database that only accepts read-only sessions, as a demoted primary after a failover
    _set_database(database_url, "SET default_transaction_read_only = on")
    try:
        with running_worker(database_url, rabbit_url, tmp_path / "w.log") as worker:
            # When a change arrives while it is read-only
            producer.send_task(
                "stocks.submit",
                kwargs={"changes": [{"campaign_id": 1, "sku": "RO-1", "count": 7}]},
                queue="stocks.changes",
            )
            wait_for("a failed attempt", lambda: "database_unavailable" in worker.log_text(), 60)
            assert queue_counts(rabbit_url) != (0, 0), "the message left the queue uncommitted"
            # And the database becomes writable again, without touching the worker's sessions
            _reset_database(database_url, "default_transaction_read_only")
            # Then the change is applied
            wait_for("the change", lambda: _stock_value(engine, "RO-1") == 7, 60)
            wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 30)
    finally:
        _reset_database(database_url, "default_transaction_read_only")


@pytest.fixture
def worker(database_url: str, rabbit_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as started:
        yield started


def _submit_body(changes: list[dict[str, object]] | str) -> bytes:
    inner = changes if isinstance(changes, str) else json.dumps(changes)
    return f'[[], {{"changes": {inner}}}, {{}}]'.encode()


@pytest.mark.parametrize(
    ("task_id", "label"),
    [("bad\x00id-" + uuid.uuid4().hex, "nul"), ("x" * 3000, "3 KB")],
    ids=["nul", "3kb"],
)
def test_a_task_id_the_database_cannot_hold_is_stored_as_unreadable(
    worker: WorkerProcess,
    engine: Engine,
    rabbit_url: str,
    producer: Celery,
    task_id: str,
    label: str,
) -> None:
    # Given a message whose task id holds a NUL, or is 3 KB long (beyond the btree row limit)
    changes = [{"campaign_id": 1, "sku": "ID-" + label, "count": 3}]
    publish_raw(
        rabbit_url,
        _submit_body(changes),
        content_type="application/json",
        headers=celery_headers(task_id=task_id),
    )
    # Then it is stored as unreadable with a reason naming the task id, and leaves the queue
    wait_for("an unreadable row", lambda: len(unreadable_rows(engine)) == 1, 60)
    ((stored_id, (reason, stored_raw)),) = unreadable_rows(engine).items()
    assert "task id" in reason
    assert stored_id.startswith("refused:")
    assert "ID-" + label in stored_raw
    wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 30)
    # And the worker goes on with the next message
    producer.send_task(
        "stocks.submit",
        kwargs={"changes": [{"campaign_id": 1, "sku": "AFTER", "count": 1}]},
        queue="stocks.changes",
    )
    wait_for("the next change", lambda: _stock_value(engine, "AFTER") == 1, 60)


@pytest.mark.parametrize("depth", [900, 925, 950, 975, 1000])
def test_a_change_nested_hundreds_deep_is_stored_with_a_reason(
    worker: WorkerProcess, engine: Engine, rabbit_url: str, depth: int
) -> None:
    # Given a message whose change has a field nested `depth` levels deep
    task_id = str(uuid.uuid4())
    nested = "[" * depth + "]" * depth
    body = _submit_body(f'[{{"campaign_id": 1, "sku": "DEEP", "count": 1, "extra": {nested}}}]')
    publish_raw(
        rabbit_url, body, content_type="application/json", headers=celery_headers(task_id=task_id)
    )
    # Then it is stored, refused with a reason, and the queue moves on
    wait_for(
        "a stored refusal",
        lambda: scalar(engine, "SELECT count(*) FROM rejected WHERE reason <> ''") == 1,
        60,
    )
    wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 30)
    assert scalar(engine, "SELECT count(*) FROM stock WHERE sku = 'DEEP'") == 0
    time.sleep(0.5)
    assert worker.process is not None and worker.process.poll() is None
