"""One worker frozen (SIGSTOP) inside a claim of one campaign stops nothing else: two real worker
processes, RabbitMQ, PostgreSQL and the Market sandbox over HTTP.

To freeze a worker at the right moment, the test holds an uncommitted `claimed_key` row of a
pending key of campaign A: the first drain to claim A waits on it inside its claim transaction,
holding A's campaign row. pg_stat_activity (each worker's `application_name`) says whose drain
that is; that worker is stopped with SIGSTOP, and the test's row is rolled back. The frozen
worker's session then sits idle in its transaction with A's row locked, as a worker frozen or cut
off there would."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
from celery import Celery
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests import services
from tests.integration.drain_support import SECRET_KEY, counts_at, pending_keys, put_changes
from tests.services import wait_for

pytestmark = pytest.mark.slow

A, B = 7001, 7002
WORKER_PROCESSES = 2


def _worker(
    name: str, database_url: str, rabbit_url: str, sandbox: MarketSandbox, log: Path, beat: bool
) -> services.WorkerProcess:
    env = services.service_env(
        database_url,
        rabbit_url,
        STOCKSYNC_MARKET_BASE_URL=sandbox.url,
        STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
        STOCKSYNC_DRAIN_INTERVAL_SECONDS="0.5",
        PGAPPNAME=name,  # libpq: each worker's sessions are told apart in pg_stat_activity
    )
    return services.WorkerProcess(
        env,
        log,
        extra_args=("--concurrency", str(WORKER_PROCESSES)),
        beat_schedule=log.with_suffix(".beat") if beat else None,
    )


def _blocked_by(trap: psycopg.Connection[tuple[object, ...]], engine: Engine) -> str | None:
    """The application name of a session waiting on the trap's row lock, if any."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT application_name FROM pg_stat_activity "
                "WHERE :trap = ANY(pg_blocking_pids(pid)) LIMIT 1"
            ),
            {"trap": trap.info.backend_pid},
        ).scalar()


def _values(engine: Engine) -> dict[tuple[int, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT group_id, sku, value FROM stock")).all()
    return {(g, s): v for g, s, v in rows}


def _at_sandbox(sandbox: MarketSandbox) -> dict[tuple[int, str], int]:
    return {(c, s): n for c in (A, B) for s, n in counts_at(sandbox, c).items()}


def _changes(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM change_log")).scalar_one())


def test_a_worker_frozen_inside_a_claim_stops_neither_other_campaigns_nor_ingest(
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    sandbox: MarketSandbox,
    producer: Celery,
    tmp_path: Path,
) -> None:
    put_changes(
        engine, [{"campaign_id": c, "sku": f"S{i}", "count": 10} for c in (A, B) for i in range(20)]
    )
    workers = {
        "x": _worker("x", database_url, rabbit_url, sandbox, tmp_path / "x.log", beat=False),
        "y": _worker("y", database_url, rabbit_url, sandbox, tmp_path / "y.log", beat=True),
    }
    frozen: services.WorkerProcess | None = None
    try:
        for worker in workers.values():
            worker.start()
        wait_for("the first values to be sent", lambda: pending_keys(engine) == 0, 60)
        try:
            frozen, traps = _freeze_inside_a_claim_of_a(workers, engine, database_url)
            stopped_at = time.monotonic()
            # When B changes and producers send more changes (of B's SKUs)
            put_changes(engine, [{"campaign_id": B, "sku": f"S{i}", "count": 3} for i in range(20)])
            before = _changes(engine)
            messages = 6
            for i in range(messages):
                producer.send_task(
                    "stocks.submit",
                    kwargs={"changes": [{"campaign_id": B, "sku": f"N{i}", "count": 4}]},
                    queue="stocks.changes",
                    task_id=uuid4().hex,
                )
            # Then within 10 s B's new values reach the Market and ingest goes on: only the
            # messages the frozen worker had already taken (at most its prefetch) wait for it
            wait_for(
                "B's new values at the Market",
                lambda: all(counts_at(sandbox, B).get(f"S{i}") == 3 for i in range(20)),
                10,
            )
            wait_for(
                "ingest to go on",
                lambda: _changes(engine) - before >= messages - WORKER_PROCESSES,
                max(0.5, 10 - (time.monotonic() - stopped_at)),
            )
        finally:
            if frozen is not None and frozen.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(frozen.process.pid, signal.SIGCONT)
        # And once it runs again nothing is lost: every key right at the Market
        wait_for("every message stored", lambda: _changes(engine) - before == messages, 60)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 90)
        assert len(_values(engine)) == 40 + traps + messages
        assert _at_sandbox(sandbox) == _values(engine)
    finally:
        for worker in workers.values():
            worker.stop()


def _freeze_inside_a_claim_of_a(
    workers: dict[str, services.WorkerProcess], engine: Engine, database_url: str
) -> tuple[services.WorkerProcess, int]:
    """SIGSTOPs worker x while its drain holds a claim transaction of A; returns it and the
    number of trap keys made pending. Only x, the worker without beat, is frozen: beat goes on.
    Each try makes a new key of A pending behind the trap's row."""
    libpq = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    for attempt in range(20):
        with psycopg.connect(libpq) as trap:
            sku = f"T{attempt}"
            trap.execute(
                "INSERT INTO claimed_key (group_id, sku, claim_id) VALUES (%s, %s, 'trap')",
                (A, sku),
            )
            put_changes(engine, [{"campaign_id": A, "sku": sku, "count": 5}])
            wait_for("a claim of A to wait", lambda: _blocked_by(trap, engine) is not None, 20)
            holder = _blocked_by(trap, engine)
            frozen = workers["x"]
            if holder == "x" and frozen.process is not None:
                os.killpg(frozen.process.pid, signal.SIGSTOP)
            trap.rollback()
            if holder == "x":
                return frozen, attempt + 1
    raise AssertionError("the worker without beat never took a claim of A")
