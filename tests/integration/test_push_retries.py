"""`stocks.push` retries through Celery (issue 11, item 3): a real worker with beat, RabbitMQ,
PostgreSQL and the sandbox over HTTP. What is observed is Celery's own record of a retry, the
worker's `Task stocks.push[…] retry: Retry in …s` line (written where Celery sends the
task-retried event and a result backend would store RETRY)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    assert_no_request_before_until,
    campaign_flag,
    counts_at,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.services import wait_for
from worker import counters

pytestmark = pytest.mark.slow

RETRY_LINE = re.compile(r"Task stocks\.push\[[0-9a-f-]+\] retry: Retry in ([0-9.]+)s")


def retry_countdowns(log: str) -> list[float]:
    """The countdown of every Celery retry of `stocks.push` the worker logged."""
    return [float(m.group(1)) for m in RETRY_LINE.finditer(log)]


def counter(engine: Engine, name: str) -> float:
    with engine.connect() as conn:
        return sum(r.value for r in counters.read_all(conn) if r.name == name)


def answered(sandbox: MarketSandbox, status: int) -> int:
    return int(sandbox.stats()["requests_by_status"].get(str(status), 0))


def test_a_420_with_a_short_until_is_a_celery_retry_after_the_until(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a Market that answers 420 with a -Until one second ahead
    sandbox.configure(error_420_rate=1.0, injected_420_wait_seconds=1)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(20)])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log") as worker:
        # When the push meets it, Celery retries the task (no loop inside it)
        wait_for("a Celery retry", lambda: bool(retry_countdowns(worker.log_text())), 30)
        sandbox.configure(error_420_rate=0.0)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        log = worker.log_text()
    # Then every retry waited, never zero and never past the short wait, and nothing was sent
    # before the Market's -Until; everything arrived
    countdowns = retry_countdowns(log)
    assert countdowns and all(0 < c <= 3.0 for c in countdowns), countdowns
    assert answered(sandbox, 420) >= 1
    assert_no_request_before_until(sandbox.requests(), 1)
    assert counts_at(sandbox, 5) == {f"S{i}": i for i in range(20)}
    assert counter(engine, counters.PUSH_RETRIES) == len(countdowns)


def test_a_420_with_a_long_until_releases_the_claim_and_the_keys_go_later(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a Market whose 420 says: come back in 8 seconds
    sandbox.configure(error_420_rate=1.0, injected_420_wait_seconds=8)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(20)])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log") as worker:
        wait_for("a 420", lambda: answered(sandbox, 420) >= 1, 30)
        sandbox.configure(error_420_rate=0.0)
        # Then the push hands its claim back (no ETA message held for 8 s) and a later drain
        # delivers the keys once the block is over
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
        log = worker.log_text()
    assert "'outcome': 'released: wait" in log
    assert retry_countdowns(log) == []
    assert_no_request_before_until(sandbox.requests(), 8)
    assert counts_at(sandbox, 5) == {f"S{i}": i for i in range(20)}


def test_5xx_retries_back_off_and_spent_retries_release_the_claim_losing_nothing(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a Market that answers 500 to everything, and five retries allowed
    sandbox.configure(error_500_rate=1.0)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(20)])
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", push_max_retries="5"
    ) as worker:
        # When the five retries are spent, the claim goes back and the campaign shows degraded
        degraded = lambda: campaign_flag(engine, 5, "degraded_reason")  # noqa: E731
        wait_for("the campaign to be degraded", degraded, 40)
        log = worker.log_text()
        sandbox.configure(error_500_rate=0.0)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
    # Then each retry waited a backoff (never zero), the give-up was logged and counted, and
    # every key arrived after all
    countdowns = retry_countdowns(log)
    assert len(countdowns) >= 5 and all(c > 0 for c in countdowns), countdowns
    assert "push_given_up" in log
    assert "MaxRetriesExceededError" not in log
    assert counter(engine, counters.PUSH_GIVEN_UP) >= 1
    assert counts_at(sandbox, 5) == {f"S{i}": i for i in range(20)}


def test_the_running_worker_has_the_configured_rate_limit_on_stocks_push(
    database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a worker started with a push ceiling of 7 a minute
    with running_worker(
        database_url, rabbit_url, sandbox, tmp_path / "w.log", push_rate_limit="7/m"
    ) as worker:
        # When Celery's remote control asks it for its tasks' rate limits
        found = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "worker", "inspect", "registered", "rate_limit"],
            cwd=worker.cwd,
            env=worker.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # Then stocks.push carries it, and no other task does
    assert "stocks.push [rate_limit=7/m]" in found.stdout, found.stdout + found.stderr
    assert "* stocks.submit\n" in found.stdout
