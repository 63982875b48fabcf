"""Messages the worker cannot hand to a task are kept in `rejected` before they leave the queue.

Celery drops some messages on its own and only logs them: a content type other than JSON (a
pickle is never loaded), a body that does not decode, an unknown task name, a message that is no
task at all. Others it does not even drop: a JSON body of the wrong shape raises inside its
consumer and stops the worker ("Unrecoverable error"), and the message, never acknowledged, then
stops the next worker too; arguments of the wrong type fail in the pool before the task runs and
are acknowledged as a failure, kept nowhere.

`RecordingConsumer` (Celery's `worker_consumer` setting) closes both: each such message is stored
as unreadable (position -1) with its raw body, as escaped text cut to 64 KiB, and a reason that
names its content type; then it is dropped as Celery drops it (removed from the queue, not
redelivered). Nothing here decodes a body: only Celery's JSON-only decoder reads one. A body
above 32 MiB is dropped before anything decodes it, so one message's cost in memory is bounded.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from celery import Task
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message
from sqlalchemy.exc import DBAPIError
from vine import promise

from worker import runtime
from worker.database import paused_while_down
from worker.ingest import store_unreadable
from worker.logs import log_event

# The logger and the `refused_message` event keep their names: runbooks and alerts read them.
log = logging.getLogger("stocksync.refused")

# The part of an unreadable body that is kept; `body_bytes` in the stored row gives the whole size.
BODY_KEPT_BYTES = 64 * 1024
# Characters kept of a header value or of an error's text.
TEXT_KEPT = 1_000
TASK_ID_MAX_LENGTH = 255
# A body larger than this is dropped before it is decoded: what one message may cost in memory
# stays bounded (the worker holds a body several times over while decoding and handing it to a
# pool child). The largest valid message, 10,000 changes with 255-character non-ASCII SKUs and
# event ids as \uXXXX escapes, is about 30 MB.
MESSAGE_MAX_BYTES = 32 * 1024 * 1024

TaskHandler = Callable[[Message], Any]


def _printable(value: object, limit: int = TEXT_KEPT) -> str:
    """`value` as text with control characters, NUL and lone surrogates escaped, cut to `limit`."""
    text = (value if isinstance(value, str) else repr(value))[:limit]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _short(value: object) -> str | None:
    if value is None:
        return None
    return (value if isinstance(value, str) else repr(value))[:TEXT_KEPT]


def _headers(message: Message) -> dict[str, Any]:
    headers = message.headers
    return headers if isinstance(headers, dict) else {}


def _body_bytes(message: Message) -> bytes:
    body = message.body
    if body is None:
        return b""
    if isinstance(body, str):  # virtual transports hand over text
        return body.encode("utf-8", "surrogatepass")
    return bytes(body)


def content_type_of(message: Message) -> str:
    """The message's content type, quoted and escaped, for a reason."""
    content_type = message.content_type
    return f"'{_printable(content_type)}'" if content_type else "none"


def unreadable_raw(message: Message) -> dict[str, Any]:
    """What is kept of an unreadable message: content type, task, id, body as escaped text."""
    body = _body_bytes(message)
    headers = _headers(message)
    return {
        "content_type": _short(message.content_type),
        "content_encoding": _short(message.content_encoding),
        "task": _short(headers.get("task")),
        "id": _short(headers.get("id")),
        # Valid UTF-8 as it is, any other byte as \xNN; JSON escaping then covers NUL and the rest.
        "body": body[:BODY_KEPT_BYTES].decode("utf-8", "backslashreplace"),
        "body_bytes": len(body),
        "body_truncated": len(body) > BODY_KEPT_BYTES,
    }


def _is_usable_task_id(task_id: object) -> bool:
    return (
        isinstance(task_id, str)
        and 0 < len(task_id) <= TASK_ID_MAX_LENGTH
        and task_id.isprintable()
    )


def unreadable_task_id(message: Message) -> str:
    """The message's task id when it has a usable one, else a digest of the message: the same
    message delivered again is stored once."""
    headers = _headers(message)
    task_id = headers.get("id")
    if _is_usable_task_id(task_id):
        return str(task_id)
    digest = hashlib.sha256(
        repr((message.content_type, message.content_encoding, headers)).encode(
            "utf-8", "surrogatepass"
        )
        + _body_bytes(message)
    )
    return "refused:" + digest.hexdigest()[:32]


def split_task_body(payload: Any, protocol: int) -> tuple[list[Any], dict[str, Any]] | str:
    """A decoded body's args and kwargs, or why a task could not be called with it. Protocol 2
    bodies are `[args, kwargs, embed]`; protocol 1 bodies (and Celery's hybrid ones) are objects
    with `args` and `kwargs` fields."""
    embed: Any = None
    if isinstance(payload, dict) and (protocol == 1 or "args" in payload):
        args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    elif protocol == 2 and isinstance(payload, list) and len(payload) == 3:
        args, kwargs, embed = payload
    else:
        return "message: the body must be [args, kwargs, embed] (Celery's task message protocol 2)"
    if not isinstance(args, list):
        return "message: the task's args must be a list"
    if not isinstance(kwargs, dict):
        return "message: the task's kwargs must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "message: the body's third item (embed) must be an object or null"
    return args, kwargs


@lru_cache(maxsize=64)
def _signature(task: Task) -> inspect.Signature:
    return inspect.signature(task.run)


def arguments_problem(task: Task, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """Why the task's function cannot take these arguments, or None."""
    # Celery calls every task through `__call__(self, *args, **kwargs)`: a keyword argument named
    # `self` fails there, whatever the task's own signature.
    if "self" in kwargs:
        return "message: the task's kwargs must not include 'self'"
    try:
        _signature(task).bind(*args, **kwargs)
    except TypeError as exc:
        return f"message: arguments the task cannot take ({_printable(exc)})"
    return None


class RecordingConsumer(Consumer):
    """Celery's consumer; every message it drops is first stored in `rejected` as unreadable."""

    def create_task_handler(self, promise: Any = promise) -> TaskHandler:
        handle: TaskHandler = super().create_task_handler(promise)
        expected_errors = tuple(self.connection_errors) + tuple(self.channel_errors)

        def on_task_received(message: Message) -> Any:
            size = len(_body_bytes(message))
            if size > MESSAGE_MAX_BYTES:
                self._drop_unreadable(
                    message,
                    f"message: the body is {size:,} bytes, more than the limit of "
                    f"{MESSAGE_MAX_BYTES:,}; send fewer changes per message",
                )
                return None
            problem = self._task_problem(message)
            if problem is not None:
                self._drop_unreadable(message, problem)
                return None
            try:
                return handle(message)
            except expected_errors:
                raise
            except Exception as exc:
                # Celery's handler raised before the message reached the pool (it catches what
                # happens after): drop it here rather than let it stop the worker.
                if message.acknowledged:
                    raise
                self._drop_unreadable(
                    message,
                    f"message: cannot be handed to its task ({type(exc).__name__}: "
                    f"{_printable(exc)})",
                )
                return None

        return on_task_received

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        reason = f"message: the body cannot be decoded ({_printable(exc)})"
        if self._kept(message, reason):
            super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        if isinstance(exc, ContentDisallowed):
            reason = "message: refused, only application/json is accepted"
        else:
            reason = f"message: not a valid task message ({_printable(exc)})"
        if self._kept(message, reason):
            super().on_invalid_task(body, message, exc)

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        name = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
        if self._kept(message, f"message: unknown task '{_printable(name)}'"):
            super().on_unknown_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Message) -> None:
        if self._kept(message, "message: not a Celery task message"):
            super().on_unknown_message(body, message)

    def _task_problem(self, message: Message) -> str | None:
        """Why a message for a known task would fail before its task runs, where Celery lets it
        through. A body that does not decode, an unknown task, a message that is no task are
        Celery's to drop (and are kept by the handlers above)."""
        call = self._known_task_call(message)
        if call is None:
            return None
        name, task_id, payload, protocol = call
        if not isinstance(task_id, str) or not task_id:
            # Changes without event ids are keyed by their message's task id.
            return "message: the task id must be a non-empty string"
        body = split_task_body(payload, protocol)
        if isinstance(body, str):
            return body
        problem = arguments_problem(self.app.tasks[name], *body)
        # The pool child decodes the body again: the main process keeps no decoded copy (for a
        # 50 MB body, 50 MB more for as long as the task runs).
        message._decoded_cache = None
        return problem

    def _known_task_call(self, message: Message) -> tuple[str, Any, Any, int] | None:
        """(task name, task id, decoded body, protocol) of a message for a registered task."""
        headers = message.headers
        if not isinstance(headers, dict):
            return None
        try:
            payload = message.payload
        except Exception:
            return None
        protocol, fields = (2, headers) if "task" in headers else (1, payload)
        if not isinstance(fields, dict):
            return None
        name = fields.get("task")
        if not isinstance(name, str) or name not in self.strategies:
            return None
        return name, fields.get("id"), payload, protocol

    def _drop_unreadable(self, message: Message, reason: str) -> None:
        if self._kept(message, reason):
            message.reject_log_error(log, self.connection_errors)

    def _kept(self, message: Message, reason: str) -> bool:
        """Stores the unreadable message. False when PostgreSQL is unreachable: the message then
        went back to the queue and must not be dropped."""
        reason = f"{reason} (content type {content_type_of(message)})"
        task_id = unreadable_task_id(message)
        try:
            store_unreadable(runtime.consumer_engine(), task_id, unreadable_raw(message), reason)
        except DBAPIError as exc:
            if not paused_while_down(exc, log, task=task_id):
                log.exception("unreadable message %s could not be stored", task_id)
                return True
            message.reject_log_error(log, self.connection_errors, requeue=True)
            return False
        except Exception:
            log.exception("unreadable message %s could not be stored", task_id)
            return True
        log_event(log, logging.WARNING, "refused_message", task=task_id, reason=reason)
        return True
