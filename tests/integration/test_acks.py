"""A message is acknowledged only when its changes are committed or it is stored as unreadable
with the reason (issue 13, items 1 and 7): a real worker, RabbitMQ and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from tests import services
from tests.integration.broker_support import (
    celery_headers,
    publish_raw,
    queue_counts,
    running_worker,
    scalar,
    unreadable_rows,
    wait_for,
)
from tests.services import WorkerProcess

pytestmark = pytest.mark.slow


def _database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


def _set_database(database_url: str, setting: str) -> None:
    """`ALTER DATABASE … SET/RESET`; open sessions are cut so that every new one sees it."""
    name = _database_name(database_url)
    services.admin_execute(f'ALTER DATABASE "{name}" {setting}')
    services.admin_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def _reset_database(database_url: str, setting: str) -> None:
    """`ALTER DATABASE … RESET`, leaving the worker's sessions alone: they must heal by
    themselves, as after a failover."""
    services.admin_execute(f'ALTER DATABASE "{_database_name(database_url)}" RESET {setting}')


def _stock_value(engine: Engine, sku: str) -> int | None:
    return scalar(engine, "SELECT max(value) FROM stock WHERE sku = :sku", sku=sku)


def test_a_change_sent_while_the_database_is_read_only_is_applied_once_it_is_writable(
    engine: Engine, database_url: str, rabbit_url: str, producer: Celery, tmp_path: Path
) -> None:
    # Given a running worker whose database turns to accepting read-only sessions only, as a
    # demoted primary after a failover (the worker starts on a writable one: at start it records
    # its routing and waits for a writable database before it is ready)
    try:
        with running_worker(database_url, rabbit_url, tmp_path / "w.log") as worker:
            _set_database(database_url, "SET default_transaction_read_only = on")
            # When a change arrives while it is read-only
            producer.send_task(
                "stocks.submit",
                kwargs={"changes": [{"campaign_id": 1, "sku": "RO-1", "count": 7}]},
                queue="stocks.changes",
            )
            wait_for("a failed attempt", lambda: "database_unavailable" in worker.log_text(), 60)
            assert queue_counts(rabbit_url) != (0, 0), "the message left the queue uncommitted"
            # And the database becomes writable again, without touching the worker's sessions
            _reset_database(database_url, "default_transaction_read_only")
            # Then the change is applied
            wait_for("the change", lambda: _stock_value(engine, "RO-1") == 7, 60)
            wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 30)
    finally:
        _reset_database(database_url, "default_transaction_read_only")


@pytest.fixture
def worker(database_url: str, rabbit_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as started:
        yield started


def _submit_body(changes: list[dict[str, object]] | str) -> bytes:
    inner = changes if isinstance(changes, str) else json.dumps(changes)
    return f'[[], {{"changes": {inner}}}, {{}}]'.encode()


@pytest.mark.parametrize(
    ("task_id", "label"),
    [("bad\x00id-" + uuid.uuid4().hex, "nul"), ("x" * 3000, "3 KB")],
    ids=["nul", "3kb"],
)
def test_a_task_id_the_database_cannot_hold_is_stored_as_unreadable(
    worker: WorkerProcess,
    engine: Engine,
    rabbit_url: str,
    producer: Celery,
    task_id: str,
    label: str,
) -> None:
    # Given a message whose task id holds a NUL, or is 3 KB long (beyond the btree row limit)
    changes = [{"campaign_id": 1, "sku": "ID-" + label, "count": 3}]
    publish_raw(
        rabbit_url,
        _submit_body(changes),
        content_type="application/json",
        headers=celery_headers(task_id=task_id),
    )
    # Then it is stored as unreadable with a reason naming the task id, and leaves the queue
    wait_for("an unreadable row", lambda: len(unreadable_rows(engine)) == 1, 60)
    ((stored_id, (reason, stored_raw)),) = unreadable_rows(engine).items()
    assert "task id" in reason
    assert stored_id.startswith("refused:")
    assert "ID-" + label in stored_raw
    wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 30)
    # And the worker goes on with the next message
    producer.send_task(
        "stocks.submit",
        kwargs={"changes": [{"campaign_id": 1, "sku": "AFTER", "count": 1}]},
        queue="stocks.changes",
    )
    wait_for("the next change", lambda: _stock_value(engine, "AFTER") == 1, 60)


@pytest.mark.parametrize("depth", [900, 925, 950, 975, 1000])
def test_a_change_nested_hundreds_deep_is_stored_with_a_reason(
    worker: WorkerProcess, engine: Engine, rabbit_url: str, depth: int
) -> None:
    # Given a message whose change has a field nested `depth` levels deep
    task_id = str(uuid.uuid4())
    nested = "[" * depth + "]" * depth
    body = _submit_body(f'[{{"campaign_id": 1, "sku": "DEEP", "count": 1, "extra": {nested}}}]')
    publish_raw(
        rabbit_url, body, content_type="application/json", headers=celery_headers(task_id=task_id)
    )
    # Then it is stored, refused with a reason, and the queue moves on
    wait_for(
        "a stored refusal",
        lambda: scalar(engine, "SELECT count(*) FROM rejected WHERE reason <> ''") == 1,
        60,
    )
    wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 30)
    assert scalar(engine, "SELECT count(*) FROM stock WHERE sku = 'DEEP'") == 0
    time.sleep(0.5)
    assert worker.process is not None and worker.process.poll() is None


def test_statement_timeouts_for_six_deliveries_do_not_set_a_valid_message_aside(
    engine: Engine, database_url: str, rabbit_url: str, producer: Celery, tmp_path: Path
) -> None:
    # Given a worker whose sessions cancel a statement after 0.5 s (its session options override
    # any database-level setting), and a change log whose inserts take 2 s (a trigger), so that
    # the ingest's statements time out while the worker's other statements pass
    changes = [{"campaign_id": 1, "sku": f"ST-{n}", "count": n} for n in range(2_000)]
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER test_slow_insert BEFORE INSERT ON change_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION test_slow_insert()"
        )
    with running_worker(
        database_url,
        rabbit_url,
        tmp_path / "w.log",
        STOCKSYNC_DATABASE_STATEMENT_TIMEOUT_SECONDS="0.5",
    ) as worker:
        producer.send_task("stocks.submit", kwargs={"changes": changes}, queue="stocks.changes")
        # When six deliveries in a row fail on it
        wait_for(
            "six failed deliveries (or the message set aside)",
            lambda: (
                worker.log_text().count("database_unavailable sqlstate=57014\n") >= 6
                or bool(unreadable_rows(engine))
            ),
            90,
        )
        assert unreadable_rows(engine) == {}
        # And the inserts are fast again
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER test_slow_insert ON change_log")
        # Then the change is applied, not set aside
        wait_for("the changes", lambda: _stock_value(engine, "ST-1999") == 1999, 60)
    assert unreadable_rows(engine) == {}
    assert scalar(engine, "SELECT count(*) FROM stock WHERE sku LIKE 'ST-%'") == 2_000


def test_lock_timeouts_for_six_deliveries_do_not_set_a_valid_message_aside(
    engine: Engine, database_url: str, rabbit_url: str, producer: Celery, tmp_path: Path
) -> None:
    # Given a key whose row another session holds locked, and a worker with a 100 ms lock timeout
    producer.send_task(
        "stocks.submit",
        kwargs={"changes": [{"campaign_id": 1, "sku": "LOCKED", "count": 1}]},
        queue="stocks.changes",
    )
    with running_worker(database_url, rabbit_url, tmp_path / "w0.log"):
        wait_for("the key", lambda: _stock_value(engine, "LOCKED") == 1, 60)
    holder = engine.connect()
    try:
        holder.exec_driver_sql("BEGIN")
        holder.exec_driver_sql("SELECT 1 FROM stock WHERE sku = 'LOCKED' FOR UPDATE")
        # (the worker's own lock timeout: its session options override a database-level one)
        with running_worker(
            database_url,
            rabbit_url,
            tmp_path / "w.log",
            STOCKSYNC_DATABASE_LOCK_TIMEOUT_SECONDS="0.1",
        ) as worker:
            producer.send_task(
                "stocks.submit",
                kwargs={"changes": [{"campaign_id": 1, "sku": "LOCKED", "count": 2}]},
                queue="stocks.changes",
            )
            # When seven deliveries in a row time out on the lock
            wait_for(
                "seven failed deliveries (or the message set aside)",
                lambda: (
                    worker.log_text().count("database_unavailable") >= 7
                    or bool(unreadable_rows(engine))
                ),
                90,
            )
            assert unreadable_rows(engine) == {}
            # And the lock is released
            holder.exec_driver_sql("ROLLBACK")
            # Then the change is applied, not set aside
            wait_for("the change", lambda: _stock_value(engine, "LOCKED") == 2, 60)
    finally:
        holder.close()
    assert unreadable_rows(engine) == {}


def _stocksync(database_url: str, rabbit_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stocksync", *args],
        check=False,
        cwd=services.ROOT,
        env=services.service_env(database_url, rabbit_url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_message_set_aside_is_applied_after_replay(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    # Given a stocks.submit message set aside after six deliveries, and a refused pickle
    task_id = str(uuid.uuid4())
    raw = {"args": [], "kwargs": {"changes": [{"campaign_id": 1, "sku": "REPLAYED", "count": 5}]}}
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO rejected (task_id, position, raw, reason) VALUES "
                "(:t, -1, :raw, 'message: set aside after 6 deliveries (each stopped its worker)'),"
                "('refused:abc', -1, '{\"content_type\": \"application/x-python-serialize\"}',"
                " 'message: refused, only application/json is accepted')"
            ),
            {"t": task_id, "raw": json.dumps(raw)},
        )
        conn.execute(
            text(
                "INSERT INTO redelivery (task_id, deliveries, first_seen_at) "
                "VALUES (:t, 6, now() - interval '1 hour')"
            ),
            {"t": task_id},
        )
    # When an operator replays it
    replayed = _stocksync(database_url, rabbit_url, "replay", task_id)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {task_id}" in replayed.stdout
    # Then a worker applies it, and it is no longer listed as unreadable
    with running_worker(database_url, rabbit_url, tmp_path / "w.log"):
        wait_for("the replayed change", lambda: _stock_value(engine, "REPLAYED") == 5, 60)
    assert list(unreadable_rows(engine)) == ["refused:abc"]
    # Its count started again, and it keeps the time it was first received
    assert scalar(engine, "SELECT deliveries FROM redelivery WHERE task_id = :t", t=task_id) == 1
    assert scalar(
        engine,
        "SELECT occurred_at < now() - interval '59 minutes' FROM change_log WHERE sku = 'REPLAYED'",
    )
    # And --all skips what is no task message, saying why (exit 2: nothing replayed)
    skipped = _stocksync(database_url, rabbit_url, "replay", "--all")
    assert skipped.returncode == 2
    assert "refused:abc: not replayable" in skipped.stdout


def test_a_count_without_occurred_at_keeps_its_first_delivery_time_across_a_redelivery(
    engine: Engine, database_url: str, rabbit_url: str, producer: Celery, tmp_path: Path
) -> None:
    # Given a worker whose first delivery of a DIES-FIRST change dies before it commits
    marker, release = tmp_path / "first-delivery", tmp_path / "release"
    env = services.service_env(
        database_url,
        rabbit_url,
        STOCKSYNC_TEST_MARKER=str(marker),
        STOCKSYNC_TEST_RELEASE=str(release),
    )
    worker = WorkerProcess(
        env, tmp_path / "w.log", extra_args=("-I", "tests.faults.dies_first", "-c", "2")
    ).start()
    try:
        # When a count 40 without occurred_at arrives and its first delivery dies
        producer.send_task(
            "stocks.submit",
            kwargs={"changes": [{"campaign_id": 1, "sku": "DIES-FIRST", "count": 40}]},
            queue="stocks.changes",
        )
        wait_for("the first delivery", marker.exists, 60)
        time.sleep(0.5)
        # And a delta -1 that happened after it was received is committed meanwhile
        producer.send_task(
            "stocks.submit",
            kwargs={
                "changes": [
                    {
                        "campaign_id": 1,
                        "sku": "DIES-FIRST",
                        "delta": -1,
                        "occurred_at": datetime.now(UTC).isoformat(),
                    }
                ]
            },
            queue="stocks.changes",
        )
        wait_for(
            "the delta",
            lambda: scalar(engine, "SELECT count(*) FROM change_log WHERE delta = -1") == 1,
            60,
        )
        # And the count is redelivered
        release.touch()
        wait_for(
            "the count",
            lambda: scalar(engine, "SELECT count(*) FROM change_log WHERE count = 40") == 1,
            60,
        )
    finally:
        worker.stop()
    # Then the count is dated when it was first received, and the later delta counts
    assert _stock_value(engine, "DIES-FIRST") == 39
