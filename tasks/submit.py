"""`stocks.submit`: validate a producer's changes and commit them to the outbox, then ack."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Reject
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from domain.changes import ParsedMessage, UnreadableMessage, parse_message
from worker import runtime
from worker.app import app
from worker.database import paused_while_down
from worker.ingest import (
    StoreResult,
    campaign_of,
    count_redelivery,
    store_message,
    store_unreadable,
)
from worker.logs import log_event
from worker.settings import get_settings

log = logging.getLogger("stocksync.submit")
T = TypeVar("T")

# A message delivered this often (each time its worker died) is set aside as unreadable: under
# `task_reject_on_worker_lost` a message that kills the worker would otherwise loop forever.
MAX_DELIVERIES = 5


@app.task(name="stocks.submit", bind=True, acks_late=True, reject_on_worker_lost=True)
def submit(self: Task, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Applies a message's valid changes exactly once; rejected ones are stored with reasons."""
    task_id = str(self.request.id)
    engine = runtime.engine()
    raw = {"args": list(args), "kwargs": kwargs}
    if (self.request.delivery_info or {}).get("redelivered"):
        deliveries = _with_database(lambda: count_redelivery(engine, task_id))
        if deliveries > MAX_DELIVERIES:
            reason = f"message: set aside after {deliveries} deliveries (each stopped its worker)"
            _keep_unreadable(task_id, raw, reason)
            return {"applied": 0, "duplicates": 0, "rejected": 1}
    try:
        parsed = parse_message(args, kwargs, datetime.now(UTC))
    except UnreadableMessage as exc:
        _keep_unreadable(task_id, raw, str(exc))
        return {"applied": 0, "duplicates": 0, "rejected": 1}
    result = _with_database(lambda: _routed_then_stored(engine, task_id, parsed))
    for rejection in parsed.rejected:
        log_event(
            log,
            logging.INFO,
            "rejected_change",
            task=task_id,
            index=rejection.index,
            campaign=campaign_of(rejection.raw),
            reason=rejection.reason,
        )
    log_event(
        log,
        logging.INFO,
        "stored_message",
        task=task_id,
        applied=result.applied,
        duplicates=result.duplicates,
        rejected=result.rejected,
    )
    return {"applied": result.applied, "duplicates": result.duplicates, "rejected": result.rejected}


def _routed_then_stored(engine: Engine, task_id: str, parsed: ParsedMessage) -> StoreResult:
    """The message's changes stored under the configured routing (applied first, once)."""
    runtime.routed()
    return store_message(engine, task_id, parsed.accepted, parsed.rejected, get_settings().group_of)


def _with_database(work: Callable[[], T]) -> T:
    """Runs `work`; while PostgreSQL is unreachable the message goes back to the broker, unacked."""
    try:
        return work()
    except DBAPIError as exc:
        if paused_while_down(exc, log):
            raise Reject(reason="database unavailable", requeue=True) from None
        raise


def _keep_unreadable(task_id: str, raw: Any, reason: str) -> None:
    log_event(log, logging.WARNING, "unreadable_message", task=task_id, reason=reason)
    _with_database(lambda: store_unreadable(runtime.engine(), task_id, raw, reason))
