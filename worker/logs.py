"""Log lines: logfmt (`time=… level=… event=push campaign=5 …`) or one JSON object per line,
each carrying the task it was logged in, with secrets masked.

The task context (`task_id`, `task`, and `campaign` and `claim` where known) lives in a
contextvar: Celery's `task_prerun`/`task_postrun` signals set and clear it (worker/app.py), the
drain binds each campaign it claims for (`log_context`). A filter on every handler copies it onto
each record, so Celery's own lines of a task (received, retry, succeeded) carry it too.

Formatters are libraries': python-json-logger for JSON, logfmter's quoting for logfmt. Every
handler also gets a filter that replaces the configured API key and OAuth token with `***`
wherever they appear (message, arguments, fields), as a second line of defence: nothing logs
them on purpose.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from logfmter import Logfmter
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

from worker.settings import Settings

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# Celery's TaskFormatter sets these on records it formats: no fields of an event.
_CELERY_FIELDS = frozenset({"task_name", "data"})
# The record attribute naming the context fields a ContextFilter added (not the event's own).
_ADDED = "_context_fields"

# The context fields, in the order a line shows them.
CONTEXT_FIELDS = ("task_id", "task", "campaign", "claim")
# Task parameters that name a context field: a task taking `campaign_id` logs `campaign=…`.
TASK_PARAMETERS = {"campaign_id": "campaign", "claim_id": "claim"}

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("stocksync_log_context", default=_EMPTY)


def quote(value: Any) -> str:
    """One logfmt value: bare when it can be, else double-quoted with `\\`, `"` and control
    characters escaped (logfmter's rules); None is empty, booleans `true`/`false`."""
    return str(Logfmter.format_value(value))


def logfmt(fields: Mapping[str, Any]) -> str:
    """`key=value …` with every value quoted as logfmt needs."""
    return " ".join(f"{key}={quote(value)}" for key, value in fields.items())


def current_context() -> dict[str, Any]:
    """The fields every line logged now carries (this task's, this campaign's)."""
    return dict(_context.get())


def bind(**fields: Any) -> object:
    """Adds fields to the context until `unbind(token)`; None values are left out."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def unbind(token: object) -> None:
    _context.reset(token)  # type: ignore[arg-type]


def clear() -> None:
    """Forgets the whole context (a task ended: the next one in this process starts empty)."""
    _context.set(_EMPTY)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block carries `fields` too."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def bind_task(task_id: str | None, task: Any, args: Any, kwargs: Any) -> None:
    """The context of a task starting: its id and name, and the campaign and claim its
    arguments name (parameters `campaign_id`, `claim_id`)."""
    fields: dict[str, Any] = {"task_id": task_id, "task": getattr(task, "name", None)}
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
    except (TypeError, ValueError, AttributeError):
        bound = None  # arguments that do not fit: the task itself will say so
    if bound is not None:
        for parameter, field in TASK_PARAMETERS.items():
            if parameter in bound.arguments:
                fields[field] = bound.arguments[parameter]
    clear()
    bind(**fields)


class ContextFilter(logging.Filter):
    """Copies the context onto each record, as attributes the record does not have already."""

    def filter(self, record: logging.LogRecord) -> bool:
        added = []
        for key, value in _context.get().items():
            if key not in record.__dict__:
                record.__dict__[key] = value
                added.append(key)
        if added:
            record.__dict__[_ADDED] = (*record.__dict__.get(_ADDED, ()), *added)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's own fields: what `extra` and the context filter put on it."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RESERVED and k not in _CELERY_FIELDS and not k.startswith("_")
    }


class SecretMask(logging.Filter):
    """Replaces each secret in a record's message, arguments and fields with `***`."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def _masked(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self._masked(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in _fields(record).items():
            if isinstance(value, str) and value != (clean := self._masked(value)):
                record.__dict__[key] = clean
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # Formatters use exc_text when exc_info is gone: none formats the raw exception again.
            record.exc_text, record.exc_info = self._masked(record.exc_text), None
        return True


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class LogfmtFormatter(logging.Formatter):
    """`time=… level=… logger=…`, the task context, then `event=… <fields>` for an event
    (`log_event`) or `msg="…"` for any other line; a traceback as one quoted `exc_info`."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        added = record.__dict__.get(_ADDED, ())
        line: dict[str, Any] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
        }
        line.update((k, fields.pop(k)) for k in CONTEXT_FIELDS if k in added and k in fields)
        line.update((k, fields.pop(k)) for k in list(fields) if k in added)
        if "event" not in fields:
            line["msg"] = record.getMessage()
        line.update(fields)
        text = logfmt(line)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text += f" exc_info={quote(record.exc_text)}"
        return text


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line: time, level, logger, message, the task context and the event's
    fields (python-json-logger)."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            reserved_attrs=[*_RESERVED, *_CELERY_FIELDS, _ADDED],
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = _time(record)
        super().add_fields(log_data, record, message_dict)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Logs `event k=v …` (logfmt-quoted); the fields also go to the line as keys of their own."""
    text = " ".join([event, logfmt(fields)]) if fields else event
    logger.log(level, text, extra={"event": event, **fields})


def secrets_of(settings: Settings) -> list[str]:
    return [
        s.get_secret_value()
        for s in (settings.market_api_key, settings.market_oauth_token)
        if s is not None
    ]


def apply_to(logger: logging.Logger, settings: Settings) -> None:
    """Every handler of `logger`: the task context, secrets masked, logfmt or JSON lines."""
    context = ContextFilter()
    mask = SecretMask(secrets_of(settings))
    formatter = JsonFormatter() if settings.log_format == "json" else LogfmtFormatter()
    for handler in logger.handlers:
        handler.addFilter(context)
        handler.addFilter(mask)
        handler.setFormatter(formatter)
