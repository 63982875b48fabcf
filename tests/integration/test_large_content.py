"""A change with a 50 MB field is refused and stored cut to 64 KiB, and the worker's memory stays
bounded (issue 13, item 11): a real worker, RabbitMQ and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import Engine, text

from tests.integration.broker_support import (
    celery_headers,
    publish_raw,
    queue_counts,
    running_worker,
    scalar,
    wait_for,
)
from tests.services import WorkerProcess

pytestmark = pytest.mark.slow

FIELD_BYTES = 50 * 1024 * 1024
# What a 50 MB message may add to the worker group's memory (main process and pool children,
# summed): the broker client's frames and the body itself, never decoded. Decoded and handed to
# a pool child as before, it added about 510 MiB.
RSS_GROWTH_BOUND = 200 * 1024 * 1024


def _group_rss(worker: WorkerProcess) -> int:
    assert worker.process is not None
    main = psutil.Process(worker.process.pid)
    total = 0
    for process in [main, *main.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


@pytest.fixture
def worker(database_url: str, rabbit_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with running_worker(
        database_url, rabbit_url, tmp_path / "worker.log", STOCKSYNC_LOG_FORMAT="plain"
    ) as started:
        yield started


def _submit_raw(rabbit_url: str, task_id: str, changes: list[dict[str, object]]) -> None:
    publish_raw(
        rabbit_url,
        json.dumps([[], {"changes": changes}, {}]).encode(),
        content_type="application/json",
        headers=celery_headers(task_id=task_id),
    )


def _rejected(engine: Engine, task_id: str) -> tuple[int, str, str]:
    with engine.connect() as conn:
        position, reason, raw = conn.execute(
            text("SELECT position, reason, raw FROM rejected WHERE task_id = :t"), {"t": task_id}
        ).one()
    return position, reason, raw


def test_a_50_mb_field_is_refused_and_stored_cut_with_bounded_memory(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    # Given a message with a change holding a 50 MB field
    task_id = str(uuid.uuid4())
    baseline = _group_rss(worker)
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _group_rss(worker))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # When it is sent
        _submit_raw(
            rabbit_url,
            task_id,
            [
                {"campaign_id": 1, "sku": "BIG-OK", "count": 3},
                {"campaign_id": 1, "sku": "BIG", "count": 1, "note": "x" * FIELD_BYTES},
            ],
        )
        wait_for(
            "the refusal",
            lambda: (
                scalar(engine, "SELECT count(*) FROM rejected WHERE task_id = :t", t=task_id) == 1
            ),
            120,
        )
        wait_for("the ack", lambda: queue_counts(rabbit_url) == (0, 0), 60)
    finally:
        done.set()
        sampler.join()
    # Then it is stored as unreadable, its body cut to 64 KiB, with its size
    position, reason, raw = _rejected(engine, task_id)
    assert position == -1
    assert "more than the limit of 33,554,432" in reason
    stored = json.loads(raw)
    assert set(stored) >= {"body", "body_bytes"}, raw[:300]
    assert len(stored["body"]) == 65_536
    assert stored["body_bytes"] > FIELD_BYTES
    assert stored["body_truncated"] is True
    # And the worker's memory grew by less than the bound
    growth = peak[0] - baseline
    print(f"worker group RSS: baseline {baseline >> 20} MiB, peak {peak[0] >> 20} MiB")
    assert growth < RSS_GROWTH_BOUND, f"grew by {growth >> 20} MiB"


def test_a_refused_change_with_a_1_mb_field_is_stored_cut_and_the_valid_one_applied(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    task_id = str(uuid.uuid4())
    _submit_raw(
        rabbit_url,
        task_id,
        [
            {"campaign_id": 1, "sku": "MB-OK", "count": 3},
            {"campaign_id": 1, "sku": "MB", "count": 1, "note": "y" * 1_000_000},
        ],
    )
    wait_for("the valid change", lambda: scalar(engine, "SELECT count(*) FROM stock") == 1, 60)
    assert scalar(engine, "SELECT value FROM stock WHERE sku = 'MB-OK'") == 3
    position, reason, raw = _rejected(engine, task_id)
    assert (position, reason) == (1, "note: is not a known field")
    assert len(raw.encode()) <= 70_000
    stored = json.loads(raw)
    assert stored["raw_truncated"] is True
    assert stored["raw_chars"] > 1_000_000
    assert stored["raw"].startswith('{"campaign_id": 1, "sku": "MB", "count": 1, "note": "yyy')
