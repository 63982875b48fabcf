"""Operator time input: `--since 2h`, `--since 1d12h` or `--since 2026-11-28T10:00+03:00`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:[0-9]+[smhdw])+", re.ASCII)
_PART = re.compile(r"([0-9]+)([smhdw])", re.ASCII)
# Far enough for any operator, near enough that `now - duration` stays a valid datetime.
_DURATION_MAX = timedelta(days=365 * 100)

SINCE_HELP = (
    "a duration back from now (90s, 30m, 2h, 1d12h, 1w) or an ISO 8601 date-time "
    "(2026-11-28T10:00+03:00; without an offset it is UTC)"
)


def parse_duration(text: str) -> timedelta | None:
    """`30m`, `2h`, `1d12h` … as a timedelta; None when `text` is not such a duration."""
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        return None
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    if seconds > _DURATION_MAX.total_seconds():
        return None
    return timedelta(seconds=seconds)


def parse_since(text: str, now: datetime) -> datetime:
    """The instant `text` names (a duration before `now`, or a date-time), else `ValueError`."""
    duration = parse_duration(text)
    if duration is not None:
        return now - duration
    try:
        instant = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration nor an ISO 8601 date-time") from None
    if instant.tzinfo is None or instant.utcoffset() is None:
        instant = instant.replace(tzinfo=UTC)
    return instant
