"""`stocksync run`'s pools per kind of work (issue 10 item 2): a change is committed at once while
every push process is busy with a slow Market. Real processes: `stocksync run` (its ingest worker,
push worker and beat), PostgreSQL, RabbitMQ, and the sandbox over HTTP answering every PUT after
3 s with a 420: each push holds its process for the request, then retries.

It can fail: with the ingest worker consuming every queue (one pool for all work) the changes
that met a push in the pool took 3.1 s (`[0.29, 0.03, 0.03, 3.16, 3.08]`)."""

from __future__ import annotations

import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.acceptance.conftest import STOCKSYNC, clean_env
from tests.integration.drain_support import SECRET_KEY, put_changes
from tests.services import kill_process_group, wait_for, wait_for_log_line

pytestmark = pytest.mark.slow

CAMPAIGNS = (1001, 1002, 1003, 1004)
SUBMITS = 5
# One change through an idle ingest worker takes milliseconds; a push cycle here takes seconds.
INGEST_BOUND_SECONDS = 2.0

_STORED = text("SELECT count(*) FROM stock WHERE group_id = 5001 AND sku = :sku")


def _stored(engine: Engine, sku: str) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(_STORED, {"sku": sku}).scalar_one())


@pytest.mark.timeout(180)
def test_ingest_is_not_delayed_while_every_push_process_waits_on_a_slow_market(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    with MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=1) as sandbox:
        # Given a slow Market that answers every PUT after 3 s with a 420 (retried) ...
        sandbox.configure(error_420_rate=1.0, injected_420_wait_seconds=2.5, latency_ms=3000)
        # ... and keys pending in several campaigns, more pushes than the one push process
        put_changes(engine, [{"campaign_id": c, "sku": "P-1", "count": 1} for c in CAMPAIGNS])
        env = clean_env(
            STOCKSYNC_DATABASE_URL=database_url,
            STOCKSYNC_BROKER_URL=rabbit_url,
            STOCKSYNC_MARKET_BASE_URL=sandbox.url,
            STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
            STOCKSYNC_DRAIN_INTERVAL_SECONDS="0.5",
            STOCKSYNC_INGEST_CONCURRENCY="1",
            STOCKSYNC_PUSH_CONCURRENCY="1",
            STOCKSYNC_DATA_DIR=str(tmp_path / "data"),
        )
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            run = subprocess.Popen(
                [str(STOCKSYNC), "run"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        producer = Celery("pools-test", broker=rabbit_url, set_as_current=False)
        try:
            wait_for_log_line(run, log, 0, 90, marker=b"ingest@")
            wait_for_log_line(run, log, 0, 90, marker=b"push@")
            # When the push pool is busy with slow requests answered 420
            wait_for(
                "pushes answered 420",
                lambda: sandbox.stats()["requests_by_status"].get("420", 0) >= 2,
                60,
            )
            before = sandbox.stats()["requests_by_status"].get("420", 0)
            took = []
            for n in range(SUBMITS):
                sku = f"IN-{n}"
                started = time.monotonic()
                producer.send_task(
                    "stocks.submit",
                    kwargs={"changes": [{"campaign_id": 5001, "sku": sku, "count": 1}]},
                    queue="stocks.changes",
                )
                wait_for(f"{sku} committed", partial(_stored, engine, sku), 30, 0.02)
                took.append(time.monotonic() - started)
            # (the pushes went on waiting and retrying meanwhile, not finished)
            wait_for(
                "another 420",
                lambda: sandbox.stats()["requests_by_status"].get("420", 0) > before,
                15,
            )
            run.send_signal(signal.SIGTERM)
            code = run.wait(60)
        finally:
            producer.close()
            if run.poll() is None:
                kill_process_group(run)

    # Then every change was committed at once, the pushes still busy meanwhile
    assert max(took) < INGEST_BOUND_SECONDS, [round(t, 2) for t in took]
    assert code == 0, log.read_text(errors="replace")[-3000:]
