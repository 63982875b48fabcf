"""Log lines: secrets masked whatever logs them, JSON lines carrying the event's fields, logfmt
lines quoted so that any value reads back whole, the task context on every line."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from worker.logs import (
    JsonFormatter,
    SecretMask,
    apply_to,
    bind_task,
    clear,
    current_context,
    log_context,
    log_event,
    quote,
)
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


LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)(?:\s|$)')


def _logfmt_fields(line: str) -> dict[str, str]:
    """A logfmt line read back as logfmt readers do: a bare value literally, a quoted one with
    Go's escapes (JSON's: \\", \\\\, \\n, \\t, \\uXXXX). Every character must belong to a pair."""
    fields, end = {}, 0
    for match in LOGFMT_PAIR.finditer(line):
        assert match.start() == end, f"not logfmt at {end}: {line[end:]!r}"
        key, value = match.groups()
        fields[key] = json.loads(value) if value.startswith('"') else value
        end = match.end()
    assert end == len(line), f"not logfmt at {end}: {line[end:]!r}"
    return fields


def test_plain_lines_are_logfmt() -> None:
    logger, stream = _capture(Settings())
    log_event(logger, logging.INFO, "rejected_change", index=3, reason="sku: is required")
    line = stream.getvalue().strip()
    assert line.startswith("time=20")
    assert " level=INFO logger=test.logs." in line
    assert line.endswith(' event=rejected_change index=3 reason="sku: is required"')


NASTY = {
    "spaces": ("a b", '"a b"'),
    "quotes": ('say "hi"', '"say \\"hi\\""'),
    "equals": ("k=v", '"k=v"'),
    "newline": ("line 1\nline 2", '"line 1\\nline 2"'),
    "tab": ("a\tb", '"a\\tb"'),
    "backslash_quoted": ('c:\\ "x"', '"c:\\\\ \\"x\\""'),
    "empty": ("", ""),
    "none": (None, ""),
    "true": (True, "true"),
    "number": (-2, "-2"),
    "unicode": ("склад №1", '"склад №1"'),
}


@pytest.mark.parametrize("name", sorted(NASTY))
def test_logfmt_quotes_nasty_values(name: str) -> None:
    value, quoted = NASTY[name]
    assert quote(value) == quoted


def test_a_line_of_nasty_values_reads_back_field_by_field() -> None:
    logger, stream = _capture(Settings())
    values = {
        "reason": 'sku: must match "^x$" = bad',
        "raw": '{"sku": "A 1",\n "count": 2}',
        "path": "a\\b",
    }
    log_event(logger, logging.WARNING, "rejected_change", index=1, **values)
    logger.error('free text with "quotes"\nand a second line')
    first, second = stream.getvalue().splitlines()  # one line each, newlines escaped
    fields = _logfmt_fields(first)
    assert fields["event"] == "rejected_change"
    assert fields["index"] == "1"
    assert fields["reason"] == values["reason"]
    assert fields["path"] == values["path"]
    assert fields["raw"] == values["raw"]
    assert _logfmt_fields(second)["msg"] == 'free text with "quotes"\nand a second line'


def test_a_traceback_stays_on_one_quoted_field() -> None:
    logger, stream = _capture(Settings())
    try:
        raise ValueError("boom = bad")
    except ValueError:
        logger.exception("push failed")
    (line,) = stream.getvalue().splitlines()
    assert "ValueError: boom = bad" in _logfmt_fields(line)["exc_info"]


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_every_line_in_a_context_carries_it(
    monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    monkeypatch.setenv("STOCKSYNC_LOG_FORMAT", log_format)
    logger, stream = _capture(Settings())
    with log_context(task_id="t-1", task="stocks.push", campaign=5, claim="c 9"):
        logger.info("anything at all")
        log_event(logger, logging.INFO, "push", campaign=5, status=200)
    logger.info("after the task")
    lines = stream.getvalue().splitlines()
    read = json.loads if log_format == "json" else _logfmt_fields
    inside, event, after = (read(line) for line in lines)
    for line in (inside, event):
        assert (line["task_id"], line["task"], str(line["claim"])) == ("t-1", "stocks.push", "c 9")
        assert str(line["campaign"]) == "5"
    assert "task_id" not in after
    if log_format == "plain":  # the context first, then the event, as it reads
        assert lines[1].split(" task_id=", 1)[1].startswith('t-1 task=stocks.push claim="c 9" ')
        assert lines[1].endswith(" event=push campaign=5 status=200")


def test_a_task_binds_its_id_name_campaign_and_claim(monkeypatch: pytest.MonkeyPatch) -> None:
    # Importing a task configures the app, which refuses to start without a database URL
    # (nothing connects to it here).
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    from tasks.push import push

    bind_task("t-2", push, (1001, "claim-7", 40), {})
    try:
        assert current_context() == {
            "task_id": "t-2",
            "task": "stocks.push",
            "campaign": 1001,
            "claim": "claim-7",
        }
    finally:
        clear()
    assert current_context() == {}


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_a_secret_in_an_events_field_is_masked(
    monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", "key-456-secret")
    monkeypatch.setenv("STOCKSYNC_LOG_FORMAT", log_format)
    logger, stream = _capture(Settings())
    log_event(logger, logging.WARNING, "odd", url="https://x/?k=key-456-secret")
    try:
        raise RuntimeError("sent key-456-secret")
    except RuntimeError:
        logger.exception("failed")
    assert "key-456-secret" not in stream.getvalue()
    assert "***" in stream.getvalue()


def test_json_formatter_and_mask_work_on_plain_records() -> None:
    record = logging.makeLogRecord({"msg": "token %s", "args": ("tok-9",), "levelname": "INFO"})
    SecretMask(["tok-9"]).filter(record)
    assert json.loads(JsonFormatter().format(record))["message"] == "token ***"
