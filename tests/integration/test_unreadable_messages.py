"""Raw broker messages the worker must not run are refused, stored as unreadable and acknowledged
(CONTRACT.md sections 1 and 2): published with kombu byte for byte, to a real worker."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine

from tests import services
from tests.integration.broker_support import (
    CHANGES_QUEUE,
    celery_headers,
    publish_raw,
    queue_counts,
    running_worker,
    scalar,
    unreadable_rows,
    wait_for,
)
from tests.services import WorkerProcess
from worker.database import make_engine

pytestmark = pytest.mark.slow


@pytest.fixture
def worker(database_url: str, rabbit_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as started:
        yield started


class _TouchOnLoad:
    """Unpickling this creates a file: the proof that a pickle was, or was not, executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Path]]:
        return (Path.touch, (self.path,))


def pickled_submit(marker: Path) -> bytes:
    """A protocol-2 `stocks.submit` body, pickled, that creates `marker` when it is loaded."""
    change = {"campaign_id": 1, "sku": "PICKLED", "count": 1}
    return pickle.dumps(([], {"changes": [change], "note": _TouchOnLoad(marker)}, {}))


def send_good_change(rabbit_url: str, sku: str) -> None:
    producer = Celery(broker=rabbit_url)
    try:
        producer.send_task(
            "stocks.submit",
            kwargs={"changes": [{"campaign_id": 1, "sku": sku, "count": 3}]},
            queue=CHANGES_QUEUE,
        )
    finally:
        producer.close()


def stock_value(engine: Engine, sku: str) -> int | None:
    return scalar(engine, "SELECT max(value) FROM stock WHERE group_id = 1 AND sku = :sku", sku=sku)


def assert_refused_once_and_acknowledged(
    worker: WorkerProcess, rabbit_url: str, task_ids: list[str]
) -> None:
    """Each message was stored once (never redelivered), never ran, and nothing is left in the
    queue; the worker is alive."""
    log = worker.log_text()
    for task_id in task_ids:
        assert log.count(f"refused_message task={task_id} ") == 1, task_id
        assert f"stocks.submit[{task_id}] succeeded" not in log, task_id
    assert queue_counts(rabbit_url) == (0, 0)
    assert worker.process is not None and worker.process.poll() is None


def test_a_pickled_submit_is_stored_and_never_executed(
    worker: WorkerProcess, engine: Engine, rabbit_url: str, tmp_path: Path
) -> None:
    # Given a pickle that creates a file when loaded (it does: loaded here, it makes `control`)
    control, marker = tmp_path / "control", tmp_path / "marker"
    pickle.loads(pickled_submit(control))  # our own payload: proves it is live
    assert control.exists()
    body = pickled_submit(marker)
    task_id = str(uuid.uuid4())
    # When it is published as a stocks.submit message with pickle's content type
    publish_raw(
        rabbit_url,
        body,
        content_type="application/x-python-serialize",
        content_encoding="binary",
        headers=celery_headers(task_id=task_id),
    )
    # Then it is stored as unreadable, with its body and a reason naming the content type
    wait_for("the refusal to be stored", lambda: task_id in unreadable_rows(engine))
    reason, raw = unreadable_rows(engine)[task_id]
    assert reason == (
        "message: refused, only application/json is accepted "
        "(content type 'application/x-python-serialize')"
    )
    stored = json.loads(raw)
    assert stored["body"] == body.decode("utf-8", "backslashreplace")
    assert stored["content_type"] == "application/x-python-serialize"
    assert (stored["task"], stored["id"], stored["body_bytes"]) == (
        "stocks.submit",
        task_id,
        len(body),
    )
    # And it never ran: no file, no stock, no task received
    assert not marker.exists()
    assert f"stocks.submit[{task_id}] received" not in worker.log_text()
    assert stock_value(engine, "PICKLED") is None
    # And the worker goes on with the next message
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [task_id])
    assert not marker.exists()


def test_a_json_message_whose_body_is_not_json_is_stored(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    task_id = str(uuid.uuid4())
    body = b'{"changes": [{"campaign_id": 1, "sku": "A\x00", "count": 1}\xff'
    publish_raw(
        rabbit_url, body, content_type="application/json", headers=celery_headers(task_id=task_id)
    )
    wait_for("the refusal to be stored", lambda: task_id in unreadable_rows(engine))
    reason, raw = unreadable_rows(engine)[task_id]
    assert reason.startswith("message: the body cannot be decoded (")
    assert reason.endswith("(content type 'application/json')")
    # NUL and the byte that is not UTF-8 are kept, escaped
    assert (
        json.loads(raw)["body"]
        == '{"changes": [{"campaign_id": 1, "sku": "A\x00", "count": 1}\\xff'
    )
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [task_id])


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"campaign 1, sku T, count 1"),
        ("application/x-yaml", b"changes:\n  - {campaign_id: 1, sku: Y, count: 1}\n"),
    ],
)
def test_a_body_of_another_content_type_is_stored(
    worker: WorkerProcess, engine: Engine, rabbit_url: str, content_type: str, body: bytes
) -> None:
    task_id = str(uuid.uuid4())
    publish_raw(
        rabbit_url, body, content_type=content_type, headers=celery_headers(task_id=task_id)
    )
    wait_for("the refusal to be stored", lambda: task_id in unreadable_rows(engine))
    reason, raw = unreadable_rows(engine)[task_id]
    assert reason == (
        f"message: refused, only application/json is accepted (content type '{content_type}')"
    )
    assert json.loads(raw)["body"] == body.decode()
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [task_id])


def test_a_message_for_an_unknown_task_is_stored(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    task_id = str(uuid.uuid4())
    body = json.dumps([[], {"changes": [{"campaign_id": 1, "sku": "U", "count": 1}]}, {}])
    publish_raw(
        rabbit_url,
        body.encode(),
        content_type="application/json",
        headers=celery_headers(task="stocks.submit_v2", task_id=task_id),
    )
    wait_for("the refusal to be stored", lambda: task_id in unreadable_rows(engine))
    reason, raw = unreadable_rows(engine)[task_id]
    assert reason == "message: unknown task 'stocks.submit_v2' (content type 'application/json')"
    assert json.loads(raw)["body"] == body
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [task_id])


# JSON messages for stocks.submit that Celery itself cannot call the task with. Without the
# consumer's check the first stops the worker ("Unrecoverable error"), and stops the next worker
# it is redelivered to; the others fail in the pool and are acknowledged, stored nowhere.
MALFORMED = [
    (b'{"changes": [{"campaign_id": 1, "sku": "M", "count": 1}]}', "message: the body must be "
     "[args, kwargs, embed] (Celery's task message protocol 2)"),
    (b'[[], "changes", {}]', "message: the task's kwargs must be an object"),
    (b'[{"changes": []}, {}, {}]', "message: the task's args must be a list"),
    (b'[[], {"changes": []}, "embed"]',
     "message: the body's third item (embed) must be an object or null"),
    (b'[[], {"self": 1, "changes": []}, {}]', "message: the task's kwargs must not include 'self'"),
]  # fmt: skip


def test_a_json_body_the_task_cannot_be_called_with_is_stored_and_the_worker_survives(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    task_ids = [str(uuid.uuid4()) for _ in MALFORMED]
    for task_id, (body, _) in zip(task_ids, MALFORMED, strict=True):
        publish_raw(
            rabbit_url,
            body,
            content_type="application/json",
            headers=celery_headers(task_id=task_id),
        )
    wait_for("every refusal", lambda: set(task_ids) <= set(unreadable_rows(engine)))
    rows = unreadable_rows(engine)
    for task_id, (body, reason) in zip(task_ids, MALFORMED, strict=True):
        assert rows[task_id][0] == f"{reason} (content type 'application/json')"
        assert json.loads(rows[task_id][1])["body"] == body.decode()
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, task_ids)
    assert "Unrecoverable error" not in worker.log_text()


def test_a_message_whose_headers_celery_cannot_read_is_stored_and_the_worker_survives(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    # Headers that make Celery's own handler raise before the task is reached; unhandled, that
    # stops the worker (a time limit that is not a pair, a task name that is not a string)
    body = b'[[], {"changes": [{"campaign_id": 1, "sku": "H", "count": 1}]}, {}]'
    time_limit, task_list = str(uuid.uuid4()), str(uuid.uuid4())
    publish_raw(
        rabbit_url,
        body,
        content_type="application/json",
        headers={**celery_headers(task_id=time_limit), "timelimit": "ten seconds"},
    )
    publish_raw(
        rabbit_url,
        body,
        content_type="application/json",
        headers={**celery_headers(task_id=task_list), "task": ["stocks.submit"]},
    )
    wait_for("both refusals", lambda: {time_limit, task_list} <= set(unreadable_rows(engine)))
    rows = unreadable_rows(engine)
    for task_id in (time_limit, task_list):
        assert rows[task_id][0].startswith("message: cannot be handed to its task ("), task_id
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [time_limit, task_list])
    assert stock_value(engine, "H") is None


def test_a_message_without_a_task_id_or_with_arguments_its_task_cannot_take_is_stored(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    # A stocks.submit without an id (its changes would be keyed by a missing id) and a
    # stocks.push whose arguments its function cannot take
    no_id = {k: v for k, v in celery_headers().items() if k != "id"}
    publish_raw(
        rabbit_url, b'[[], {"changes": []}, {}]', content_type="application/json", headers=no_id
    )
    push_id = str(uuid.uuid4())
    publish_raw(
        rabbit_url,
        b'[[], {"campaign": 1}, {}]',
        content_type="application/json",
        headers=celery_headers(task="stocks.push", task_id=push_id),
        queue="stocks.push",
    )
    wait_for("both refusals", lambda: len(unreadable_rows(engine)) == 2)
    rows = unreadable_rows(engine)
    assert rows[push_id][0] == (
        'message: arguments the task cannot take (TypeError("missing a required argument: '
        "'campaign_id'\")) (content type 'application/json')"
    )
    (no_id_task,) = set(rows) - {push_id}
    assert no_id_task.startswith("refused:")
    assert rows[no_id_task][0] == (
        "message: the task id must be a non-empty string (content type 'application/json')"
    )
    send_good_change(rabbit_url, "AFTER")
    wait_for("the next message", lambda: stock_value(engine, "AFTER") == 3)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [push_id, no_id_task])
    assert queue_counts(rabbit_url, "stocks.push") == (0, 0)


def test_a_large_refused_body_is_kept_up_to_64_kib(
    worker: WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    task_id = str(uuid.uuid4())
    body = b"x" * 100_000
    publish_raw(
        rabbit_url, body, content_type="text/plain", headers=celery_headers(task_id=task_id)
    )
    wait_for("the refusal to be stored", lambda: task_id in unreadable_rows(engine))
    stored = json.loads(unreadable_rows(engine)[task_id][1])
    assert stored["body"] == "x" * 65_536
    assert (stored["body_bytes"], stored["body_truncated"]) == (100_000, True)
    assert_refused_once_and_acknowledged(worker, rabbit_url, [task_id])


def test_a_refused_message_waits_in_the_queue_until_it_can_be_stored(
    template_database: str, rabbit_url: str, tmp_path: Path
) -> None:
    # Given a worker whose database does not exist yet (as if PostgreSQL were unreachable)
    name = f"stocksync_t_{uuid.uuid4().hex[:12]}"
    database_url = services.url_for_database(name)
    task_id = str(uuid.uuid4())
    try:
        with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as worker:
            # When a pickled message arrives
            publish_raw(
                rabbit_url,
                pickled_submit(tmp_path / "marker"),
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers=celery_headers(task_id=task_id),
            )
            # Then it is not removed while it cannot be stored
            wait_for(
                "a failed attempt to store it",
                lambda: f"database_unavailable task={task_id}" in worker.log_text(),
            )
            assert sum(queue_counts(rabbit_url)) == 1
            assert "Refusing to deserialize" not in worker.log_text()
            # And once the database is there, it is stored and acknowledged
            services.admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
            engine = make_engine(database_url)
            try:
                wait_for("the refusal to be stored", lambda: task_id in unreadable_rows(engine))
            finally:
                engine.dispose()
            assert_refused_once_and_acknowledged(worker, rabbit_url, [task_id])
            assert not (tmp_path / "marker").exists()
    finally:
        services.drop_database(name)
