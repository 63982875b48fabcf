"""Raw broker traffic for tests: messages published byte for byte with kombu, the queue's counts
from RabbitMQ itself, and a real worker per test."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

from kombu import Connection, Exchange, Producer, Queue
from sqlalchemy import Engine, text

from tests.services import running_worker, wait_for

__all__ = ["running_worker", "wait_for"]

CHANGES_QUEUE = "stocks.changes"


def celery_headers(task: str = "stocks.submit", task_id: str | None = None) -> dict[str, Any]:
    """The headers of a protocol-2 task message, as Celery's producer writes them."""
    task_id = task_id or str(uuid.uuid4())
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": "{}",
    }


def publish_raw(
    rabbit_url: str,
    body: bytes,
    *,
    content_type: str,
    headers: dict[str, Any],
    content_encoding: str = "utf-8",
    queue: str = CHANGES_QUEUE,
) -> None:
    """Publishes `body` exactly as given (no serializer) to a queue of the worker."""
    target = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
    with Connection(rabbit_url) as conn:
        Producer(conn.default_channel).publish(
            body,
            exchange=target.exchange,
            routing_key=queue,
            declare=[target],
            content_type=content_type,
            content_encoding=content_encoding,
            headers=headers,
            serializer=None,
        )


def queue_counts(rabbit_url: str, queue: str = CHANGES_QUEUE) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue, as RabbitMQ counts them."""
    vhost = rabbit_url.rsplit("/", 1)[1]
    columns = ["name", "messages_ready", "messages_unacknowledged"]
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, *columns],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for line in listing.splitlines():
        name, ready, unacked = line.split("\t")
        if name == queue:
            return int(ready), int(unacked)
    raise AssertionError(f"no queue {queue} in {listing!r}")


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def unreadable_rows(engine: Engine) -> dict[str, tuple[str, str]]:
    """Messages stored as unreadable: task id -> (reason, raw)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT task_id, reason, raw FROM rejected WHERE position = -1"))
        return {task_id: (reason, raw) for task_id, reason, raw in rows}
