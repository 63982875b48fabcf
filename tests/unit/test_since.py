"""`--since`: a duration back from now or an ISO 8601 instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.since import parse_duration, parse_since

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("1d12h", timedelta(days=1, hours=12)),
        (" 2H ", timedelta(hours=2)),
        ("0s", timedelta(0)),
    ],
)
def test_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    assert parse_since(text, NOW) == NOW - expected


@pytest.mark.parametrize(
    "text", ["", "h", "1", "1y", "-1h", "1.5h", "1h 30m", "\u0661h", "99999999w"]
)
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_an_instant_with_an_offset_is_kept() -> None:
    since = parse_since("2026-11-28T10:00+03:00", NOW)

    assert since == datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
    assert since.utcoffset() == timedelta(hours=3)


def test_an_instant_without_an_offset_is_utc() -> None:
    assert parse_since("2026-11-28 10:00", NOW) == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert parse_since("2026-11-28", NOW) == datetime(2026, 11, 28, tzinfo=UTC)


def test_a_z_suffix_is_utc() -> None:
    since = parse_since("2026-11-28T10:00:00Z", NOW)

    assert since == datetime(2026, 11, 28, 10, tzinfo=UTC)


@pytest.mark.parametrize("text", ["yesterday", "1y", "2026-13-01", "-1h"])
def test_anything_else_is_a_value_error_quoting_the_input(text: str) -> None:
    with pytest.raises(ValueError, match="neither a duration nor an ISO 8601 date-time"):
        parse_since(text, NOW)
