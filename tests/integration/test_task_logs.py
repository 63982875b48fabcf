"""Every log line of a push carries its task: a real worker with beat, RabbitMQ, PostgreSQL and
the sandbox over HTTP; the task ids in the lines are the ones Celery's own lines report."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    SECRET_KEY,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.services import wait_for
from tests.unit.test_logs import _logfmt_fields

pytestmark = pytest.mark.slow

# Celery's own words for a task, with the id it gives it: "Task stocks.push[<id>] received".
CELERY_TASK = re.compile(r"Task stocks\.push\[([0-9a-f-]{36})\] (received|succeeded|retry)")


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=3) as box:
        yield box


def _lines(log: Path, log_format: str) -> list[dict[str, Any]]:
    """The log's lines read back; Celery's start banner (printed, not logged) left out."""
    read = []
    for line in log.read_text(errors="replace").splitlines():
        if log_format == "json" and line.startswith("{"):
            read.append(json.loads(line))
        elif log_format == "plain" and line.startswith("time="):
            fields: dict[str, Any] = _logfmt_fields(line)
            read.append({**fields, "message": fields.get("msg", "")})
    return read


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_every_line_of_a_push_carries_its_task_id(
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    sandbox: MarketSandbox,
    tmp_path: Path,
    log_format: str,
) -> None:
    # Given two campaigns' changes, and a Market that fails some requests (retries: more lines)
    sandbox.configure(error_500_rate=0.3)
    put_changes(
        engine, [{"campaign_id": c, "sku": f"S{i}", "count": i} for c in (5, 6) for i in range(30)]
    )
    log = tmp_path / "w.log"
    # When a real worker drains them
    with running_worker(
        database_url, rabbit_url, sandbox, log, log_format=log_format, push_max_retries="10"
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
    lines = _lines(log, log_format)
    # Then Celery reported push tasks, and each line it wrote of one carries that task's id
    reported: dict[str, set[str]] = {}
    for line in lines:
        for task_id, what in CELERY_TASK.findall(str(line["message"])):
            reported.setdefault(task_id, set()).add(what)
            if what != "received":  # logged inside the task (received: before it runs)
                assert line["task_id"] == task_id, line
                assert line["task"] == "stocks.push", line
    assert reported, "no push task in the log"
    # And every line logged by a push carries a task Celery reported, its campaign and claim
    pushes = [line for line in lines if line.get("event") == "push"]
    assert pushes
    for line in pushes:
        assert line["task_id"] in reported, line
        assert line["task"] == "stocks.push"
        assert line["claim"], line
        assert str(line["campaign"]) in {"5", "6"}
    # And every line with a task id is a task's: no id leaks into a line logged after its task
    every_task_line = [line for line in lines if "task_id" in line]
    assert {line["task_id"] for line in every_task_line if line["task"] == "stocks.push"} <= set(
        reported
    )
    assert SECRET_KEY not in log.read_text(errors="replace")
