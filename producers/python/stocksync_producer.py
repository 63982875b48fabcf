"""Sends stock changes to stocksync's `stocks.submit` task with kombu alone: no Celery app.

Copy this file into a producer: it needs kombu (`pip install kombu`), and jsonschema only for
`validate=True`. It imports nothing of stocksync. The message it publishes is the Celery protocol 2
task message that `Celery.send_task("stocks.submit", kwargs=..., queue="stocks.changes")` would
publish (producers/README.md describes it byte for byte).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amqp.exceptions import MessageNacked  # py-amqp, kombu's AMQP client
from kombu import Connection, Exchange, Producer, Queue

TASK = "stocks.submit"
QUEUE = "stocks.changes"
# The schema beside this kit; pass `schema_path` when the file was copied elsewhere.
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "stocks-submit.schema.json"
# Celery cuts argsrepr/kwargsrepr (what Flower shows) to this many characters too.
REPR_MAX = 1024

# Declared exactly as the worker declares it (kombu's defaults: durable exchange and queue), so
# the producer's declaration never conflicts with the worker's and may come first.
_EXCHANGE = Exchange(QUEUE, type="direct", durable=True)
_QUEUE = Queue(QUEUE, _EXCHANGE, routing_key=QUEUE, durable=True)


class NotConfirmed(RuntimeError):
    """RabbitMQ refused the message (basic.nack): it is not queued; send it again later."""


class InvalidChanges(ValueError):
    """The changes break the schema (only with `validate=True`); nothing was sent."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= REPR_MAX else text[: REPR_MAX - 3] + "..."


def task_message(
    changes: Sequence[Any], task_id: str | None = None
) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """(body, headers, properties) of one `stocks.submit` message in Celery's protocol 2."""
    task_id = task_id or str(uuid.uuid4())
    kwargs = {"changes": list(changes)}
    # [args, kwargs, embed]; allow_nan=False: NaN and Infinity are not JSON.
    body = json.dumps(
        [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
        allow_nan=False,
    ).encode("utf-8")
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "shadow": None,
        "eta": None,
        "expires": None,
        "retries": 0,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": _short_repr(kwargs),
        "origin": f"{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
    }
    properties = {
        "correlation_id": task_id,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "delivery_mode": 2,
    }
    return body, headers, properties


def schema_problems(changes: Any, schema_path: Path = SCHEMA_PATH) -> list[str]:
    """What breaks the JSON Schema in `{"changes": changes}`, each as `changes[3].sku: why`."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(json.loads(schema_path.read_text(encoding="utf-8")))
    problems = []
    for error in validator.iter_errors({"changes": changes}):
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        problems.append(f"{where.lstrip('.') or 'message'}: {error.message}")
    return problems


def submit_changes(
    changes: Sequence[Any],
    broker_url: str,
    *,
    task_id: str | None = None,
    validate: bool = False,
    schema_path: Path = SCHEMA_PATH,
    timeout: float = 10.0,
) -> str:
    """Publishes one `stocks.submit` message and returns its task id once RabbitMQ confirmed it.

    The message is persistent and mandatory, on a channel in publisher-confirm mode: when this
    returns, the broker has taken responsibility for it; a nack (`NotConfirmed`), an unroutable
    message or no confirm within `timeout` raises. To send the same changes again after an error,
    pass the same `task_id`: the service applies a change without `event_id` once per (task id,
    position).
    """
    if validate and (problems := schema_problems(list(changes), schema_path)):
        raise InvalidChanges(problems)
    body, headers, properties = task_message(changes, task_id)
    with Connection(
        broker_url, connect_timeout=timeout, transport_options={"confirm_publish": True}
    ) as connection:
        producer = Producer(connection.default_channel)
        try:
            producer.publish(
                body,
                exchange=_EXCHANGE,
                routing_key=QUEUE,
                declare=[_QUEUE],
                serializer=None,  # the body is JSON bytes already
                headers=headers,
                mandatory=True,
                confirm_timeout=timeout,
                **properties,
            )
        except MessageNacked as exc:
            raise NotConfirmed(
                f"RabbitMQ refused message {headers['id']} (basic.nack): it is not queued"
            ) from exc
    return str(headers["id"])
