"""Log lines: plain `event key=value …` or one JSON object per line, with secrets masked.

Every handler of the worker and beat gets a filter that replaces the configured API key and OAuth
token with `***` wherever they appear, as a second line of defence: nothing logs them on purpose.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from worker.settings import Settings

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class SecretMask(logging.Filter):
    """Replaces each secret in a record's message and arguments with `***`."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = message
        for secret in self.secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def log_event(logger: logging.Logger, level: int, event: str, **fields: Any) -> None:
    """Logs `event k=v …`; the fields also go to a JSON line as keys of their own."""
    text = " ".join([event, *(f"{k}={v}" for k, v in fields.items())])
    logger.log(level, text, extra={"event": event, **fields})


def secrets_of(settings: Settings) -> list[str]:
    return [
        s.get_secret_value()
        for s in (settings.market_api_key, settings.market_oauth_token)
        if s is not None
    ]


def apply_to(logger: logging.Logger, settings: Settings) -> None:
    """Masks secrets on every handler of `logger`, and formats as JSON when configured."""
    mask = SecretMask(secrets_of(settings))
    for handler in logger.handlers:
        handler.addFilter(mask)
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())
