"""Naive B, bench only: a plain Celery task per change, with only `rate_limit` and `autoretry_for`.

Run by `python -m bench.naive` as `celery -A bench.naive.tasks worker` (default concurrency
and acks).
What a user writes from Celery's documentation: the task keeps the value in a simple PostgreSQL
table (value = value + delta, or = count; `event_id` and `occurred_at` ignored) and PUTs that one
SKU with `updatedAt` = now; `raise_for_status()` turns 5xx and 420 into errors that
`autoretry_for` retries with `retry_backoff`.

Known properties of this design, which the benchmark measures rather than fixes:
- `rate_limit` is per worker process group and per task type, not per campaign and not across
  workers: two workers, or two campaigns, and the Market's limit is no longer what is enforced.
- A retry runs the whole body again, so a delta whose PUT failed is added to the table twice.
- Early acknowledgement: a message taken by a worker that dies is gone.

Settings come from the environment: NAIVE_BROKER_URL, NAIVE_DATABASE_URL (libpq form),
NAIVE_MARKET_URL, NAIVE_RATE_LIMIT (e.g. "6000/m"; unset or empty: no rate_limit).

Bench instrumentation only (no effect on the behaviour above): the task_success, task_retry and
task_failure signals count outcomes in the table `naive_progress`, so the benchmark can tell when
every change has been handled.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import psycopg
import requests
from celery import Celery
from celery.signals import task_failure, task_retry, task_success

app = Celery("naive", broker=os.environ.get("NAIVE_BROKER_URL", "amqp://guest@localhost//"))

_MARKET = os.environ.get("NAIVE_MARKET_URL", "http://127.0.0.1:8765")
_connection: psycopg.Connection[Any] | None = None


def db() -> psycopg.Connection[Any]:
    """One autocommit connection per worker process, opened on first use."""
    global _connection  # noqa: PLW0603 - one connection per process
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(os.environ["NAIVE_DATABASE_URL"], autocommit=True)
    return _connection


@app.task(
    name="naive.update_stock",
    rate_limit=os.environ.get("NAIVE_RATE_LIMIT") or None,
    autoretry_for=(requests.RequestException,),  # HTTPError (5xx, 420) is one
    retry_backoff=True,
    max_retries=3,
)
def update_stock(
    campaign_id: int, sku: str, delta: int | None = None, count: int | None = None
) -> None:
    """Applies one change to the table and sends the SKU's new value to the Market."""
    if count is not None:
        sql = """INSERT INTO naive_stock VALUES (%s, %s, %s) ON CONFLICT (campaign_id, sku)
                 DO UPDATE SET value = EXCLUDED.value RETURNING value"""
        amount = count
    else:
        sql = """INSERT INTO naive_stock VALUES (%s, %s, %s) ON CONFLICT (campaign_id, sku)
                 DO UPDATE SET value = naive_stock.value + EXCLUDED.value RETURNING value"""
        amount = delta or 0
    row = db().execute(sql, (campaign_id, sku, amount)).fetchone()
    value = int(row[0]) if row else 0
    body = {
        "skus": [
            {
                "sku": sku,
                "items": [{"count": max(0, value), "updatedAt": datetime.now(UTC).isoformat()}],
            }
        ]
    }
    response = requests.put(
        f"{_MARKET}/v2/campaigns/{campaign_id}/offers/stocks",
        json=body,
        headers={"Api-Key": "bench"},
        timeout=10,
    )
    response.raise_for_status()


def _progress(outcome: str) -> None:
    db().execute(
        """INSERT INTO naive_progress VALUES (%s, 1)
           ON CONFLICT (outcome) DO UPDATE SET n = naive_progress.n + 1""",
        (outcome,),
    )


@task_success.connect
def _on_success(**_: Any) -> None:
    _progress("success")


@task_retry.connect
def _on_retry(**_: Any) -> None:
    _progress("retry")


@task_failure.connect
def _on_failure(**_: Any) -> None:
    _progress("failure")
