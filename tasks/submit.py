"""`stocks.submit`: validate a producer's changes and commit them to the outbox, then ack."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Reject
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from domain.changes import ParsedMessage, UnreadableMessage, parse_message, task_id_problem
from worker import runtime
from worker.app import app
from worker.database import paused_while_down
from worker.ingest import (
    StoreResult,
    campaign_of,
    count_redelivery,
    first_seen,
    forgive_redelivery,
    store_message,
    store_unreadable,
)
from worker.logs import log_event
from worker.settings import get_settings

log = logging.getLogger("stocksync.submit")
T = TypeVar("T")

# A message delivered this often (each time its worker died) is set aside as unreadable: under
# `task_reject_on_worker_lost` a message that kills the worker would otherwise loop forever.
# Only deaths count: a delivery sent back after a transient database error takes its count back.
MAX_DELIVERIES = 5

# Characters kept of an error's text in a stored reason.
ERROR_TEXT_KEPT = 500


@app.task(name="stocks.submit", bind=True, acks_late=True, reject_on_worker_lost=True)
def submit(self: Task, *args: Any, **kwargs: Any) -> dict[str, int]:
    """Applies a message's valid changes exactly once; rejected ones are stored with reasons.

    Acknowledged only once its changes are committed or it is stored as unreadable: an error that
    may pass sends it back to the broker, any other one stores it as unreadable with the reason.
    """
    task_id = self.request.id
    raw = {"args": list(args), "kwargs": kwargs}
    problem = task_id_problem(task_id)
    if problem is not None:
        _keep_unreadable(task_id, {"task_id": _printable(task_id), **raw}, problem)
        return {"applied": 0, "duplicates": 0, "rejected": 1}
    try:
        return _submit(self, str(task_id), raw, args, kwargs)
    except Reject:
        raise
    except Exception as exc:
        _keep_unreadable(str(task_id), raw, f"message: cannot be stored ({_error_text(exc)})")
        return {"applied": 0, "duplicates": 0, "rejected": 1}


def _printable(value: object, limit: int = ERROR_TEXT_KEPT) -> str:
    text = (value if isinstance(value, str) else repr(value))[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _error_text(exc: BaseException) -> str:
    # A DBAPIError's own text holds the statement and its parameters: keep the server's message.
    detail = exc.orig if isinstance(exc, DBAPIError) else exc
    return f"{type(detail).__name__}: {_printable(str(detail).strip())}"


def _needs_receipt_time(args: Any, kwargs: Any) -> bool:
    """True when a change may take the default occurred_at (one without it, as far as visible)."""
    changes = kwargs.get("changes", args[0] if args else None)
    if not isinstance(changes, list):
        return False
    return any(not isinstance(c, dict) or c.get("occurred_at") is None for c in changes)


def _stored_task_id(task_id: object) -> str:
    """The task id a refusal is stored under: a digest when the id itself cannot be stored."""
    if task_id_problem(task_id) is None:
        return str(task_id)
    digest = hashlib.sha256(repr(task_id).encode("utf-8", "surrogatepass")).hexdigest()
    return "refused:" + digest[:32]


def _submit(
    self: Task, task_id: str, raw: dict[str, Any], args: Any, kwargs: Any
) -> dict[str, int]:
    engine = runtime.engine()
    if (self.request.delivery_info or {}).get("redelivered"):
        deliveries = _with_database(lambda: count_redelivery(engine, task_id), task_id)
        if deliveries > MAX_DELIVERIES:
            reason = f"message: set aside after {deliveries} deliveries (each stopped its worker)"
            _keep_unreadable(task_id, raw, reason)
            return {"applied": 0, "duplicates": 0, "rejected": 1}
    received_at = datetime.now(UTC)
    if _needs_receipt_time(args, kwargs):
        # The default occurred_at is when the service received the message: stamped once, on the
        # database's clock, at the first delivery, and the same on every redelivery.
        received_at = _with_database(lambda: first_seen(engine, task_id), task_id)
    try:
        parsed = parse_message(args, kwargs, received_at)
    except UnreadableMessage as exc:
        _keep_unreadable(task_id, raw, str(exc))
        return {"applied": 0, "duplicates": 0, "rejected": 1}
    result = _with_database(lambda: _routed_then_stored(engine, task_id, parsed), task_id)
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


def _with_database(work: Callable[[], T], task_id: str | None = None) -> T:
    """Runs `work`; while PostgreSQL is unreachable the message goes back to the broker, unacked
    (and, when `task_id` is given, its redelivery is not counted as a death)."""
    try:
        return work()
    except DBAPIError as exc:
        if paused_while_down(exc, log):
            # Pooled sessions may sit on a server turned read-only (a demoted primary): drop them
            # all, so the next delivery connects afresh (to a read-write server only).
            runtime.engine().dispose()
            if task_id is not None:
                _forgive(task_id)
            raise Reject(reason="database unavailable", requeue=True) from None
        raise


def _forgive(task_id: str) -> None:
    # Best effort: with PostgreSQL down this fails too and the delivery counts, but then the
    # redelivery's own count mostly fails as well and sends it back uncounted.
    try:
        forgive_redelivery(runtime.engine(), task_id)
    except DBAPIError:
        runtime.engine().dispose()


def _keep_unreadable(task_id: object, raw: Any, reason: str) -> None:
    stored_id = _stored_task_id(task_id)
    log_event(log, logging.WARNING, "unreadable_message", task=stored_id, reason=reason)
    try:
        _with_database(lambda: store_unreadable(runtime.engine(), stored_id, raw, reason))
    except Reject:
        raise
    except Exception as exc:  # the raw content itself cannot be stored: keep the reason
        note = {"note": f"raw content not storable ({_error_text(exc)})"}
        _with_database(lambda: store_unreadable(runtime.engine(), stored_id, note, reason))
