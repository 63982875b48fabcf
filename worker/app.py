"""Builds the Celery application; configuration is resolved lazily, on first use."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    task_postrun,
    task_prerun,
    worker_init,
)
from kombu import Exchange, Queue

from worker import logs
from worker.database import database_url
from worker.embedded_broker import ALIAS as BROKER_ALIAS
from worker.embedded_broker import embedded_url
from worker.settings import Settings, SettingsError, get_settings

T = TypeVar("T")

CHANGES_QUEUE = "stocks.changes"
PUSH_QUEUE = "stocks.push"
DRAIN_QUEUE = "stocks.drain"
# Sweep passes on a queue of their own: a pass reading for seconds never holds up a drain.
VERIFY_QUEUE = "stocks.verify"


def _queue(name: str) -> Queue:
    # The same declaration Celery makes for a producer's `send_task(..., queue=name)`, so the
    # producer's and the worker's declarations never conflict.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def broker_url(settings: Settings) -> str:
    """RabbitMQ when configured, else kombu's SQLAlchemy transport on the service's database.

    A `sqla+postgresql…` broker is consumed through worker/embedded_broker.py (same tables, so
    producers keep `sqla+`): kombu's own consumer loses a killed worker's fetched messages.
    """
    return embedded_url(settings.broker_url or "sqla+" + database_url(settings))


# How often `stocks.check_routing` compares the routing settings with the Market: a check costs a
# few of the read methods' 1,000 and 100 calls an hour.
ROUTING_CHECK_INTERVAL_SECONDS = 3600.0
# How often `stocks.housekeeping` runs: expired claims and the request ledger, and the retention.
HOUSEKEEPING_INTERVAL_SECONDS = 300.0


def time_limits(settings: Settings) -> dict[str, dict[str, float]]:
    """Per task: the hard limit (the pool process is replaced) and a soft one 30 s before it for
    the tasks that may simply stop (a push's keys wait for their lease, a drain is repeated).
    `stocks.submit` gets no soft limit: it must never fail after taking its message. The settings
    refuse a limit whose soft part does not outlast a Market request's deadline."""
    hard = settings.task_time_limit_seconds
    soft = {"soft_time_limit": max(1.0, hard - 30), "time_limit": hard}
    # Passes over every campaign (deletions, the read-back sweep) may take longer.
    long = {"soft_time_limit": hard * 6 - 30, "time_limit": hard * 6}
    return {
        "stocks.submit": {"time_limit": hard},
        "stocks.push": soft,
        "stocks.drain": soft,
        "stocks.check_routing": soft,
        "stocks.housekeeping": long,
        "stocks.prune": long,
        "stocks.verify": long,
    }


def rate_limits(settings: Settings) -> dict[str, dict[str, str]]:
    """Celery's `rate_limit` of `stocks.push` (STOCKSYNC_PUSH_RATE_LIMIT): a ceiling per worker,
    not the Market's limit, which worker/rate_limiter.py keeps per route across all workers."""
    limit = settings.push_rate_limit
    return {} if limit is None else {"stocks.push": {"rate_limit": limit}}


def task_annotations(settings: Settings) -> dict[str, dict[str, float | str]]:
    """The time limits and rate limits in one mapping: Celery applies only the first annotation
    mapping that names a task, so two mappings would drop the second's options."""
    merged: dict[str, dict[str, float | str]] = {
        name: dict(options) for name, options in time_limits(settings).items()
    }
    for name, options in rate_limits(settings).items():
        merged.setdefault(name, {}).update(options)
    return merged


def _embedded(broker: str) -> bool:
    return broker.startswith(("sqla+", "sqlalchemy+", f"{BROKER_ALIAS}+"))


def stale_after(broker: str, seconds: float) -> dict[str, float]:
    """The send option that drops a beat-sent task not started within `seconds`. On RabbitMQ a
    per-message TTL (`expiration`), counted by the broker on its own clock. Not Celery's
    `expires`: that is an instant on the sender's clock which each worker compares with its own,
    so a beat on a host whose clock is behind would have every task it sends thrown away as
    expired by the workers on other hosts. kombu's SQLAlchemy transport has no TTL, so on the
    embedded broker `expires` stays (its hosts' clocks must then agree within `seconds`)."""
    return {"expires": seconds} if _embedded(broker) else {"expiration": seconds}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings: JSON only, acknowledged after commit, a lost worker's message requeued."""
    broker = broker_url(settings)
    return {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A task past its hard time limit (its pool process replaced) hands its message back.
        "task_acks_on_timeout": False,
        "task_annotations": task_annotations(settings),
        # A lost broker connection cancels the tasks under way (their unacknowledged messages
        # are redelivered anyway) instead of letting them finish and fail to acknowledge.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # With late acks every prefetched message is one more a crash hands back: keep it to one.
        "worker_prefetch_multiplier": 1,
        # Celery's consumer, storing every message it drops (worker/unreadable_messages.py).
        "worker_consumer": "worker.unreadable_messages:RecordingConsumer",
        "task_queues": [
            _queue(CHANGES_QUEUE),
            _queue(PUSH_QUEUE),
            _queue(DRAIN_QUEUE),
            _queue(VERIFY_QUEUE),
        ],
        "task_default_queue": CHANGES_QUEUE,
        "task_routes": {
            "stocks.submit": {"queue": CHANGES_QUEUE},
            "stocks.push": {"queue": PUSH_QUEUE},
            "stocks.drain": {"queue": DRAIN_QUEUE},
            "stocks.housekeeping": {"queue": DRAIN_QUEUE},
            "stocks.prune": {"queue": DRAIN_QUEUE},
            "stocks.check_routing": {"queue": DRAIN_QUEUE},
            "stocks.verify": {"queue": VERIFY_QUEUE},
        },
        "beat_schedule": {
            "drain-outbox": {
                "task": "stocks.drain",
                "schedule": settings.drain_interval_seconds,
                # A drain not started by the next tick is useless: the next one does its work.
                "options": stale_after(broker, max(1.0, settings.drain_interval_seconds * 2)),
            },
            "check-routing": {
                "task": "stocks.check_routing",
                "schedule": ROUTING_CHECK_INTERVAL_SECONDS,
                "options": stale_after(broker, ROUTING_CHECK_INTERVAL_SECONDS),
            },
            **(
                {
                    "verify-stock": {
                        "task": "stocks.verify",
                        "schedule": settings.verify_interval_seconds,
                        "options": stale_after(broker, max(1.0, settings.verify_interval_seconds)),
                    }
                }
                if settings.verify_hours > 0
                else {}
            ),
            "housekeeping": {
                "task": "stocks.housekeeping",
                "schedule": HOUSEKEEPING_INTERVAL_SECONDS,
                "options": stale_after(broker, HOUSEKEEPING_INTERVAL_SECONDS),
            },
        },
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        # kombu's SQLAlchemy transport hands its options to create_engine(), which refuses
        # unknown ones: it keeps its own one-second polling.
        "broker_transport_options": {} if _embedded(broker) else {"polling_interval": 0.2},
    }


app = Celery(
    "stocksync",
    include=[
        "tasks.submit",
        "tasks.drain",
        "tasks.push",
        "tasks.housekeeping",
        "tasks.routing_check",
        "tasks.verify",
    ],
)


def or_exit(build: Callable[[], T]) -> T:
    """`build()`, or exit with one line when the settings are wrong or missing: `celery -A worker
    …` with nothing configured says what to set instead of a traceback (or a server of its own)."""
    try:
        return build()
    except SettingsError as exc:
        raise SystemExit(f"stocksync: configuration error: {exc}") from None


app.add_defaults(lambda: or_exit(lambda: celery_config(get_settings())))


@after_setup_logger.connect
@after_setup_task_logger.connect
def _configure_log_lines(logger: logging.Logger, **_: Any) -> None:
    """The worker's and beat's handlers: the task context, secrets masked, logfmt or JSON."""
    logs.apply_to(logger, get_settings())


@task_prerun.connect
def _bind_task_context(
    task_id: str | None = None,
    task: Any = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """Every line logged while a task runs carries its id, name, and campaign and claim."""
    logs.bind_task(task_id, task, args, kwargs)


@task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    logs.clear()


@worker_init.connect
def _route_campaigns(**_: Any) -> None:
    """Before the worker consumes anything: the stored routing follows the configured warehouse
    groups, the keys carried over (worker/routes.py)."""
    from worker.database import make_engine
    from worker.routes import route_at_start

    settings = get_settings()
    # SystemExit passes through Celery's signal dispatch: a worker without a database stops now.
    engine = make_engine(or_exit(lambda: database_url(settings)))
    try:
        route_at_start(engine, settings)
    finally:
        engine.dispose()


@beat_init.connect
def _beat_sends_no_sent_events(sender: Any, **_: Any) -> None:
    """Beat sends only housekeeping (drain every 2 s, verify, routing check, housekeeping):
    without a `task-sent` event each, it stays out of Flower's task list, as the tasks' own
    events do (`send_events=False` on them). In beat's own process only: an embedded beat is a
    forked child, a threaded one would switch the worker's sent events off too."""
    if threading.current_thread() is threading.main_thread():
        sender.app.conf.task_send_sent_event = False


@beat_init.connect
def _check_routing_at_start(sender: Any, **_: Any) -> None:
    """When beat starts: one routing check (skipped by the task when a fresh one is stored)."""
    sender.app.send_task(
        "stocks.check_routing",
        kwargs={"at_start": True},
        queue=DRAIN_QUEUE,
        **stale_after(sender.app.conf.broker_url, ROUTING_CHECK_INTERVAL_SECONDS),
    )
