"""`stocks.submit` end to end: a producer that does not import the project, RabbitMQ, a real
`celery -A worker worker` process and PostgreSQL (CONTRACT.md sections 1 and 2)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy import Engine, text

from tests import services
from tests.integration.broker_support import scalar, wait_for

pytestmark = pytest.mark.slow

QUEUE = "stocks.changes"


@pytest.fixture
def start_worker(
    database_url: str, rabbit_url: str, tmp_path: Path
) -> Iterator[Callable[[], services.WorkerProcess]]:
    """Starts real workers on the test's database and vhost; all are stopped at the end."""
    started: list[services.WorkerProcess] = []

    def start() -> services.WorkerProcess:
        env = services.service_env(database_url, rabbit_url)
        worker = services.WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()


def queue_depth(rabbit_url: str) -> int:
    """Messages ready in `stocks.changes` (not counting those a worker holds unacknowledged)."""
    with Connection(rabbit_url) as conn:
        _, ready, _ = conn.default_channel.queue_declare(QUEUE, passive=True)
        return int(ready)


def idle(worker: services.WorkerProcess, rabbit_url: str) -> bool:
    """Nothing left in the queue and every task the worker received has finished."""
    log = worker.log_text()
    finished = log.count("] succeeded in ") + log.count("] raised unexpected")
    return queue_depth(rabbit_url) == 0 and log.count("] received") == finished


def test_changes_sent_as_the_contract_shows_are_committed(
    producer: Celery, start_worker: Callable[[], services.WorkerProcess], engine: Engine
) -> None:
    # Given a running worker
    start_worker()
    # When a producer sends the contract's example, by task name, to the changes queue
    producer.send_task(
        "stocks.submit",
        kwargs={
            "changes": [
                {
                    "campaign_id": 1001,
                    "sku": "A-100",
                    "delta": -2,
                    "event_id": "order-77:line-1",
                    "occurred_at": "2026-11-28T10:00:00+03:00",
                },
                {
                    "campaign_id": 1001,
                    "sku": "0557722",
                    "count": 40,
                    "event_id": "inventory-2026-11-28:0557722",
                },
            ]
        },
        queue="stocks.changes",
    )
    # Then both changes are in the change log and the outbox holds the values
    wait_for("two changes", lambda: scalar(engine, "SELECT count(*) FROM change_log") == 2)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT group_id, sku, value, version FROM stock ORDER BY sku"))
        assert [tuple(r) for r in rows] == [(1001, "0557722", 40, 1), (1001, "A-100", -2, 1)]


def test_unreadable_message_is_stored_and_not_retried(
    producer: Celery,
    start_worker: Callable[[], services.WorkerProcess],
    engine: Engine,
    rabbit_url: str,
) -> None:
    worker = start_worker()
    # When a message's changes are not a list
    task_id = str(uuid.uuid4())
    producer.send_task(
        "stocks.submit", kwargs={"changes": "A-100: -2"}, queue=QUEUE, task_id=task_id
    )
    # Then it is stored whole, with its raw content and the reason
    wait_for("the unreadable message", lambda: scalar(engine, "SELECT count(*) FROM rejected") > 0)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT task_id, position, raw, reason FROM rejected")).one()
    assert tuple(row) == (
        task_id,
        -1,
        '{"args": [], "kwargs": {"changes": "A-100: -2"}}',
        "changes: must be a list of change objects",
    )
    # And it is acknowledged, not retried: handled once, nothing left in the queue
    wait_for(
        "the task to finish", lambda: f"stocks.submit[{task_id}] succeeded" in worker.log_text()
    )
    time.sleep(1.0)
    assert worker.log_text().count(f"stocks.submit[{task_id}] received") == 1
    assert queue_depth(rabbit_url) == 0
    assert scalar(engine, "SELECT count(*) FROM rejected") == 1


def test_pickled_message_is_refused_and_never_executed(
    producer: Celery,
    start_worker: Callable[[], services.WorkerProcess],
    engine: Engine,
    rabbit_url: str,
) -> None:
    worker = start_worker()
    change = {"campaign_id": 1001, "sku": "P", "delta": 1}
    # When a producer publishes a pickled stocks.submit
    pickled_id = str(uuid.uuid4())
    producer.send_task(
        "stocks.submit",
        kwargs={"changes": [change]},
        queue=QUEUE,
        serializer="pickle",
        task_id=pickled_id,
    )
    # Then the worker refuses the content type
    wait_for("the refusal", lambda: "application/x-python-serialize" in worker.log_text())
    log = worker.log_text()
    assert "Refusing to deserialize untrusted content of type pickle" in log
    # And a JSON message sent after it is applied while the pickled one never ran
    producer.send_task("stocks.submit", kwargs={"changes": [{**change, "sku": "J"}]}, queue=QUEUE)
    wait_for("the JSON message", lambda: scalar(engine, "SELECT count(*) FROM change_log") == 1)
    assert scalar(engine, "SELECT sku FROM change_log") == "J"
    assert scalar(engine, "SELECT count(*) FROM stock WHERE sku = 'P'") == 0
    assert f"stocks.submit[{pickled_id}] received" not in worker.log_text()
    assert queue_depth(rabbit_url) == 0


def test_worker_killed_mid_ingest_loses_nothing_and_applies_nothing_twice(
    producer: Celery,
    start_worker: Callable[[], services.WorkerProcess],
    engine: Engine,
    rabbit_url: str,
) -> None:
    # Given 20 messages of 5,000 changes on 500 SKUs: odd messages without event ids (keyed by
    # task id and position), even ones with event ids
    messages, per_message, skus = 20, 5_000, 500
    first = start_worker()
    for m in range(messages):
        changes: list[dict[str, Any]] = []
        for i in range(per_message):
            change: dict[str, Any] = {"campaign_id": 1001, "sku": f"S{i % skus}", "delta": m + 1}
            if m % 2 == 0:
                change["event_id"] = f"m{m}:{i}"
            changes.append(change)
        producer.send_task("stocks.submit", kwargs={"changes": changes}, queue=QUEUE)
    # When the worker is killed with SIGKILL while it is committing them
    wait_for(
        "the first commits",
        lambda: scalar(engine, "SELECT count(*) FROM change_log") >= per_message,
        timeout=60,
    )
    first.kill()
    at_kill = scalar(engine, "SELECT count(*) FROM change_log")
    assert at_kill < messages * per_message, "the worker finished before it was killed"
    # And a new worker takes over
    second = start_worker()
    wait_for(
        "every change",
        lambda: scalar(engine, "SELECT count(*) FROM change_log") >= messages * per_message,
        timeout=60,
    )
    wait_for("an empty queue and an idle worker", lambda: idle(second, rabbit_url), timeout=30)
    # Then every change is applied exactly once
    assert scalar(engine, "SELECT count(*) FROM change_log") == messages * per_message
    per_sku = sum(m + 1 for m in range(messages)) * (per_message // skus)
    with engine.connect() as conn:
        values = {sku: v for sku, v in conn.execute(text("SELECT sku, value FROM stock"))}
    assert values == {f"S{s}": per_sku for s in range(skus)}
