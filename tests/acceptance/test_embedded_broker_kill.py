"""`stocksync run` on the embedded broker (kombu's SQLAlchemy transport on the service's database,
no STOCKSYNC_BROKER_URL): a SIGKILL of the whole worker group mid-ingest loses no change, applies
none twice, and the broker's message table holds only what is not yet done.

The database is a real PostgreSQL database of the test fixtures; the Market's base URL is a closed
local port, so the drain never sends traffic off this machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.conftest import STOCKSYNC, clean_env

CLOSED_LOCAL_PORT = "http://127.0.0.1:9"
MESSAGES = 20
CHANGES_PER_MESSAGE = 5_000
SKUS = 1_000
TOTAL = MESSAGES * CHANGES_PER_MESSAGE
# Beat's drain and prune messages may be in flight when the table is counted.
BROKER_ROWS_MARGIN = 5

_PRODUCER = """
import sys
from celery import Celery

messages, per_message, skus = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
producer = Celery(broker=sys.argv[1])
for m in range(messages):
    changes = [
        {"campaign_id": 1001, "sku": f"KILL-{i % skus}", "delta": 1, "event_id": f"m{m}:{i}"}
        for i in range(per_message)
    ]
    producer.send_task("stocks.submit", kwargs={"changes": changes}, queue="stocks.changes")
producer.close()
"""


def _scalar(url: str, sql: str) -> int:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def _start(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(STOCKSYNC), "run", "--concurrency", "2"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _kill_group(run: subprocess.Popen[bytes]) -> None:
    if run.poll() is None:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=30)


def _wait_until(predicate: object, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(
        f"timed out waiting for {what}:\n{log.read_text(errors='replace')[-4000:]}"
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_worker_on_the_embedded_broker_loses_no_change_and_the_table_stays_bounded(
    database_url: str, tmp_path: Path
) -> None:
    env = clean_env(
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_MARKET_BASE_URL=CLOSED_LOCAL_PORT,
        STOCKSYNC_DATA_DIR=str(tmp_path / "data"),
    )
    log = tmp_path / "run.log"
    logged = "SELECT count(*) FROM change_log"

    # Given a backlog of 20 messages of 5,000 changes on the embedded broker
    subprocess.run(
        [
            sys.executable,
            "-c",
            _PRODUCER,
            "sqla+" + database_url,
            str(MESSAGES),
            str(CHANGES_PER_MESSAGE),
            str(SKUS),
        ],
        env=env,
        check=True,
        timeout=120,
    )

    # When `stocksync run` is SIGKILLed (the whole group) while some changes are in, not all
    run = _start(env, tmp_path, log)
    try:
        _wait_until(
            lambda: run.poll() is not None or _scalar(database_url, logged) > 0,
            "the first committed message",
            120,
            log,
        )
        assert run.poll() is None, log.read_text(errors="replace")[-4000:]
    finally:
        _kill_group(run)
    at_kill = _scalar(database_url, logged)
    assert 0 < at_kill < TOTAL, f"the kill came too late to test anything: {at_kill}"

    # And it is started again
    with log.open("ab") as out:
        out.write(b"\n---- restart after SIGKILL ----\n")
    restart_offset = log.stat().st_size
    run = _start(env, tmp_path, log)
    try:
        _wait_until(
            lambda: b" ready." in log.read_bytes()[restart_offset:], "the restart", 120, log
        )
        # Done when nothing is left to deliver and the log has stopped growing for a while
        # (a message that never comes back would otherwise only show as a timeout).
        last, stable_since = -1, time.monotonic()
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            assert run.poll() is None, log.read_text(errors="replace")[-4000:]
            now = _scalar(database_url, logged)
            if now != last:
                last, stable_since = now, time.monotonic()
            if now == TOTAL or time.monotonic() - stable_since > 10:
                break
            time.sleep(0.5)
        # Acks of the last messages may trail their commit by a moment.
        time.sleep(2)
        broker_rows = _scalar(database_url, "SELECT count(*) FROM kombu_message")
    finally:
        _kill_group(run)

    # Then every change is applied exactly once
    assert _scalar(database_url, logged) == TOTAL, f"killed at {at_kill} changes"
    assert _scalar(database_url, "SELECT count(DISTINCT idempotency_key) FROM change_log") == TOTAL
    per_sku = TOTAL // SKUS
    assert _scalar(database_url, "SELECT count(*) FROM stock WHERE group_id = 1001") == SKUS
    assert _scalar(database_url, f"SELECT count(*) FROM stock WHERE value <> {per_sku}") == 0
    # And the broker's table holds no acknowledged message
    assert broker_rows <= BROKER_ROWS_MARGIN, f"{broker_rows} rows left in kombu_message"
