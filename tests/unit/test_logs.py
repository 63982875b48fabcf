"""Log lines: secrets masked whatever logs them, JSON lines carrying the event's fields."""

from __future__ import annotations

import io
import json
import logging

import pytest

from worker.logs import JsonFormatter, SecretMask, apply_to, log_event
from worker.settings import Settings


def _capture(settings: Settings) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler(stream))
    apply_to(logger, settings)
    return logger, stream


def test_the_api_key_is_masked_even_when_something_logs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", "key-123-secret")
    logger, stream = _capture(Settings())
    logger.warning("headers were %s", {"Api-Key": "key-123-secret"})
    assert "key-123-secret" not in stream.getvalue()
    assert "***" in stream.getvalue()


def test_json_lines_carry_the_events_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSYNC_LOG_FORMAT", "json")
    logger, stream = _capture(Settings())
    log_event(logger, logging.INFO, "push", campaign=5, skus=2000, status=200, attempt=1)
    line = json.loads(stream.getvalue())
    assert line["event"] == "push"
    assert (line["campaign"], line["skus"], line["status"], line["attempt"]) == (5, 2000, 200, 1)
    assert line["message"] == "push campaign=5 skus=2000 status=200 attempt=1"


def test_plain_lines_read_as_key_value_pairs() -> None:
    logger, stream = _capture(Settings())
    log_event(logger, logging.INFO, "rejected_change", index=3, reason="sku: is required")
    assert stream.getvalue().strip() == "rejected_change index=3 reason=sku: is required"


def test_json_formatter_and_mask_work_on_plain_records() -> None:
    record = logging.makeLogRecord({"msg": "token %s", "args": ("tok-9",), "levelname": "INFO"})
    SecretMask(["tok-9"]).filter(record)
    assert json.loads(JsonFormatter().format(record))["message"] == "token ***"
