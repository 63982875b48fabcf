"""Every PostgreSQL session and task run has limits (issue 13 item 8)."""

from __future__ import annotations

import pytest
from celery import Celery

from worker.app import celery_config, rate_limits, time_limits
from worker.database import connect_args
from worker.settings import Settings

DB = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to


def test_every_session_has_timeouts_and_keepalives_but_no_idle_session_timeout() -> None:
    args = connect_args(Settings(database_lock_timeout_seconds=2.5))
    assert args["connect_timeout"] == 10
    assert args["keepalives"] == 1
    assert "-c lock_timeout=2500" in args["options"]
    assert "-c statement_timeout=60000" in args["options"]
    assert "-c idle_in_transaction_session_timeout=60000" in args["options"]
    assert "idle_session_timeout" not in args["options"]


def test_long_work_has_no_statement_timeout_but_keeps_the_lock_timeout() -> None:
    options = connect_args(Settings(), long_statements=True)["options"]
    assert "-c statement_timeout=0" in options
    assert "-c lock_timeout=10000" in options


def test_submit_has_only_a_hard_time_limit() -> None:
    limits = time_limits(Settings(task_time_limit_seconds=100))
    assert limits["stocks.submit"] == {"time_limit": 100}
    assert limits["stocks.push"] == {"soft_time_limit": 70, "time_limit": 100}


def test_the_push_rate_limit_reaches_the_task_through_celerys_annotations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The project's app resolves its configuration here too: it needs a database URL (without
    # one, `celery -A worker` exits; it no longer starts an embedded PostgreSQL).
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", DB)
    import tasks.drain
    import tasks.push  # the project's tasks, shared: every app finalized gets its own copy

    # A Celery app of its own (no broker is reached) configured as the worker is.
    app = Celery("annotations")
    app.conf.update(celery_config(Settings(push_rate_limit="600/m", database_url=DB)))
    app.finalize()

    assert tasks.push.push.name in app.tasks and tasks.drain.drain.name in app.tasks
    assert app.tasks["stocks.push"].rate_limit == "600/m"
    assert app.tasks["stocks.push"].time_limit == 300  # the time limits stay
    assert app.tasks["stocks.drain"].rate_limit is None


def test_no_push_rate_limit_when_it_is_off() -> None:
    assert rate_limits(Settings(push_rate_limit="off")) == {}
    assert rate_limits(Settings()) == {"stocks.push": {"rate_limit": "100/s"}}
