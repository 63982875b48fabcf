"""The producer kit (producers/): the Node.js example (amqplib), the Python example without Celery
and the `submit_changes` helper each publish to a real RabbitMQ vhost, and a real worker applies
their changes to PostgreSQL. Nothing here skips: a missing `node` fails the Node test."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, text

from tests import services
from tests.integration.broker_support import queue_counts, running_worker, scalar, wait_for

pytestmark = pytest.mark.slow

PRODUCERS = services.ROOT / "producers"
NODE_DIR = PRODUCERS / "node"
PYTHON_DIR = PRODUCERS / "python"


def _load_helper() -> ModuleType:
    """producers/python/stocksync_producer.py as a producer would have it: a copied file."""
    spec = importlib.util.spec_from_file_location(
        "stocksync_producer", PYTHON_DIR / "stocksync_producer.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helper = _load_helper()


def changes(tag: str) -> list[dict[str, Any]]:
    """Every kind of change, one of them refused (an unknown field); `tag` keeps event ids apart."""
    return [
        {
            "campaign_id": 1001,
            "sku": " A-100 ",
            "count": 40,
            "event_id": f"{tag}:count",
            "occurred_at": "2026-11-28T10:00:00+03:00",
        },
        {
            "campaign_id": 1001,
            "sku": "A-100",
            "delta": -2,
            "event_id": f"{tag}:delta",
            "occurred_at": "2026-11-28T10:05:00+03:00",
        },
        {"campaign_id": 1002, "sku": "0557722", "delta": 5},  # keyed by task id and position
        {"campaign_id": 1002, "sku": "ё-1", "count": 7, "occurred_at": "2026-11-28T07:00:00Z"},
        {"campaign_id": 1002, "sku": "B", "delta": 1, "colour": "red"},
    ]


EXPECTED_STOCK = [(1001, "A-100", 38), (1002, "0557722", 5), (1002, "ё-1", 7)]


@pytest.fixture
def worker(database_url: str, rabbit_url: str, tmp_path: Path) -> Iterator[services.WorkerProcess]:
    with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as started:
        yield started


def stock_rows(engine: Engine) -> list[tuple[int, str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT group_id, sku, value FROM stock ORDER BY group_id, sku"))
        return [(group, sku, value) for group, sku, value in rows]


def rejected_rows(engine: Engine) -> list[tuple[str, int, str]]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT task_id, position, reason FROM rejected"))
        return [(task_id, position, reason) for task_id, position, reason in rows]


def assert_applied(engine: Engine, task_id: str) -> None:
    """The message's four valid changes are in the stock table, its fifth is stored as refused."""
    wait_for("the refused change", lambda: scalar(engine, "SELECT count(*) FROM rejected") == 1)
    wait_for("four changes", lambda: scalar(engine, "SELECT count(*) FROM change_log") == 4)
    assert stock_rows(engine) == EXPECTED_STOCK
    assert rejected_rows(engine) == [(task_id, 4, "colour: is not a known field")]


def producer_env(rabbit_url: str, **extra: str) -> dict[str, str]:
    """A producer's environment: nothing of this project (no PYTHONPATH, no STOCKSYNC_*)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_") and k != "PYTHONPATH"
    }
    env.update(STOCKSYNC_BROKER_URL=rabbit_url, **extra)
    return env


def test_node_producer_changes_are_applied(
    worker: services.WorkerProcess, engine: Engine, rabbit_url: str, tmp_path: Path
) -> None:
    node = shutil.which("node")
    assert node, "node is not installed: the Node.js producer cannot be checked (CI has node v20)"
    assert (NODE_DIR / "node_modules" / "amqplib").is_dir(), "run: npm ci --prefix producers/node"
    # Given a file of changes
    source = tmp_path / "changes.json"
    source.write_text(json.dumps(changes("node")), encoding="utf-8")
    # When the Node.js example sends it
    sent = subprocess.run(
        [node, str(NODE_DIR / "send-changes.js"), str(source)],
        cwd=tmp_path,
        env=producer_env(rabbit_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    uuid.UUID(task_id)
    # Then the worker applied its changes under the task id it printed
    assert_applied(engine, task_id)


def test_python_producer_without_celery_changes_are_applied(
    worker: services.WorkerProcess, engine: Engine, rabbit_url: str, tmp_path: Path
) -> None:
    sent = subprocess.run(
        [sys.executable, str(PYTHON_DIR / "send_changes.py"), "-"],
        input=json.dumps({"changes": changes("python")}),
        cwd=tmp_path,
        env=producer_env(rabbit_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr
    assert_applied(engine, sent.stdout.strip())


def test_python_producer_validating_refuses_bad_changes_and_sends_nothing(tmp_path: Path) -> None:
    # An unreachable broker: reaching it would be exit code 1, not 2
    sent = subprocess.run(
        [sys.executable, str(PYTHON_DIR / "send_changes.py"), "--validate", "-"],
        input=json.dumps(changes("validated")),
        cwd=tmp_path,
        env=producer_env("amqp://guest:guest@127.0.0.1:9//"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sent.returncode == 2, sent.stderr
    assert sent.stderr.startswith("changes[4]: Additional properties are not allowed ('colour'")
    assert sent.stdout == ""


def test_submit_changes_sent_twice_with_one_task_id_applies_once(
    worker: services.WorkerProcess, engine: Engine, rabbit_url: str
) -> None:
    # Given changes sent with the helper and confirmed by RabbitMQ
    task_id = helper.submit_changes(changes("helper"), rabbit_url)
    assert_applied(engine, task_id)
    # When the producer, unsure it was sent, sends the same message again with the same task id
    assert helper.submit_changes(changes("helper"), rabbit_url, task_id=task_id) == task_id
    done = f"stocks.submit[{task_id}] succeeded"
    wait_for("the second message", lambda: worker.log_text().count(done) == 2)
    # Then nothing is applied twice, not even the change without an event id
    assert stock_rows(engine) == EXPECTED_STOCK
    assert scalar(engine, "SELECT count(*) FROM change_log") == 4


def test_submit_changes_raises_when_rabbitmq_refuses_the_message(rabbit_url: str) -> None:
    # Given a queue that refuses every message (a RabbitMQ policy: length 0, reject-publish)
    vhost = rabbit_url.rsplit("/", 1)[1]
    policy = json.dumps({"max-length": 0, "overflow": "reject-publish"})
    subprocess.run(
        ["rabbitmqctl", "-q", "set_policy", "-p", vhost, "full", "^stocks\\.changes$", policy],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # When the helper sends changes, Then the broker's nack is an error, not a silent loss
    with pytest.raises(helper.NotConfirmed, match=r"basic\.nack"):
        helper.submit_changes(changes("nacked"), rabbit_url, timeout=20)
    assert queue_counts(rabbit_url) == (0, 0)


def test_submit_changes_validating_refuses_bad_changes_before_connecting() -> None:
    bad = [{"campaign_id": 0, "sku": "A", "delta": 1}, {"campaign_id": 1, "sku": "B"}]
    # An unreachable broker: reaching it would be a connection error, not InvalidChanges
    with pytest.raises(helper.InvalidChanges) as refused:
        helper.submit_changes(bad, "amqp://guest:guest@127.0.0.1:9//", validate=True)
    assert [problem.split(":")[0] for problem in refused.value.problems] == [
        "changes[0].campaign_id",
        "changes[1]",
    ]


def test_the_python_kit_imports_nothing_of_the_service_nor_celery() -> None:
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import send_changes, stocksync_producer; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'celery', 'worker', 'tasks', 'domain', 'stocksync', 'sqlalchemy', 'jsonschema'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(PYTHON_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=PYTHON_DIR,
    )
    assert result.stdout.strip() == "[]"


# --- the kit's messages and schema against Celery's and JavaScript's view of them -----------

# Headers Celery writes that carry nothing for this task; the kit leaves them out (README).
CELERY_ONLY_HEADERS = {"group_index", "replaced_task_nesting", "stamped_headers", "stamps"}
# Headers whose values are the producer's own: its process, and a free text for Flower.
PRODUCER_HEADERS = {"origin", "kwargsrepr"}


def node_task_message(node: str, changes: list[Any], task_id: str) -> tuple[Any, dict[str, Any]]:
    script = (
        f"const {{ taskMessage }} = require({json.dumps(str(NODE_DIR / 'send-changes.js'))});"
        "const m = taskMessage(JSON.parse(process.argv[1]), process.argv[2]);"
        "console.log(JSON.stringify({ body: m.body.toString('utf8'), options: m.options }));"
    )
    result = subprocess.run(
        [node, "-e", script, json.dumps(changes), task_id],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    message = json.loads(result.stdout)
    return json.loads(message["body"]), message["options"]


def test_the_kits_messages_are_the_ones_celery_writes() -> None:
    from celery import Celery

    node = shutil.which("node")
    assert node, "node is not installed: the Node.js producer cannot be checked (CI has node v20)"
    task_id = str(uuid.uuid4())
    sample = changes("celery")
    celery = Celery(set_as_current=False).amqp.as_task_v2(
        task_id, "stocks.submit", kwargs={"changes": sample}
    )
    celery_body = json.loads(json.dumps(celery.body))
    body, headers, properties = helper.task_message(sample, task_id)
    node_body, node_options = node_task_message(node, sample, task_id)

    assert json.loads(body) == celery_body
    assert node_body == celery_body
    assert set(celery.headers) - set(headers) == CELERY_ONLY_HEADERS
    for name in set(headers) - PRODUCER_HEADERS:
        assert headers[name] == celery.headers[name], name
    assert set(node_options["headers"]) == set(headers)
    for name in set(headers) - PRODUCER_HEADERS:
        assert node_options["headers"][name] == headers[name], name
    assert properties["correlation_id"] == celery.properties["correlation_id"] == task_id
    assert node_options["correlationId"] == task_id
    assert (properties["content_type"], properties["content_encoding"]) == (
        node_options["contentType"],
        node_options["contentEncoding"],
    )
    assert properties["delivery_mode"] == 2
    assert node_options["persistent"] is True


def test_the_schema_patterns_mean_the_same_in_javascript() -> None:
    # ajv and other ECMA-262 validators compile the patterns with the Unicode flag; Python's re
    # must reach the same verdicts on every string of the shared examples.
    from tests.unit import change_examples as ex

    node = shutil.which("node")
    assert node, "node is not installed: the Node.js producer cannot be checked (CI has node v20)"
    schema = json.loads((PRODUCERS / "stocks-submit.schema.json").read_text(encoding="utf-8"))
    fields = schema["$defs"]["change"]["properties"]
    samples = [
        [name, raw[name]]
        for _, raw in ex.VALID_CHANGES + ex.INVALID_CHANGES
        if isinstance(raw, dict)
        for name in ("sku", "event_id", "occurred_at")
        if isinstance(raw.get(name), str)
    ]
    assert len(samples) > 50
    python = [re.search(fields[name]["pattern"], value) is not None for name, value in samples]
    script = (
        "const [fields, samples] = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(samples.map(([name, value]) =>"
        " new RegExp(fields[name].pattern, 'u').test(value))));"
    )
    result = subprocess.run(
        [node, "-e", script],
        input=json.dumps([fields, samples]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == python
