"""domain/market_payload.py: the body of the v2 PUT, exactly as the Market's page says."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.market_payload import (
    UPDATED_AT_STEP,
    PendingStock,
    format_updated_at,
    next_updated_at,
    stocks_body,
)
from domain.market_rules import UPDATED_AT_MAX_AGE

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_body_clamps_counts_and_moves_updated_at_into_the_window() -> None:
    stocks = [
        PendingStock("neg", -3, 1, NOW - timedelta(days=2)),
        PendingStock("huge", 3_000_000_000, 1, NOW + timedelta(minutes=4)),
        PendingStock("fresh", 7, 1, NOW - timedelta(minutes=1)),
    ]
    body = json.loads(stocks_body(stocks, NOW))
    items = {e["sku"]: e["items"] for e in body["skus"]}
    assert items["neg"] == [{"count": 0, "updatedAt": "2026-11-28T13:00:00+00:00"}]
    assert items["huge"] == [{"count": 2_000_000_000, "updatedAt": "2026-11-29T12:00:00+00:00"}]
    assert items["fresh"] == [{"count": 7, "updatedAt": "2026-11-29T11:59:00+00:00"}]


def test_updated_at_is_iso_8601_in_utc_with_an_offset() -> None:
    moment = datetime(2026, 11, 29, 15, 0, tzinfo=UTC).astimezone()
    assert format_updated_at(moment) == "2026-11-29T15:00:00+00:00"


def test_body_has_each_sku_once_in_order_and_only_the_pages_fields() -> None:
    stocks = [PendingStock(f"S-{i}", i, 1, NOW) for i in range(3)]
    body = json.loads(stocks_body(stocks, NOW))
    assert list(body) == ["skus"]
    assert [e["sku"] for e in body["skus"]] == ["S-0", "S-1", "S-2"]
    assert all(
        list(e) == ["sku", "items"] and list(e["items"][0]) == ["count", "updatedAt"]
        for e in body["skus"]
    )


# Successive sends of one key: inside the Market's window, never going back.
START = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
_OFFSETS = st.integers(min_value=-2 * 86_400_000, max_value=2 * 86_400_000).map(
    lambda ms: timedelta(milliseconds=ms)
)
# One send: how far its clock moved since the previous send (forward, still, or back) and the
# key's time relative to that clock (from days old to days ahead).
_SENDS = st.lists(st.tuples(_OFFSETS, _OFFSETS), min_size=1, max_size=30)


Send = tuple[datetime, datetime | None, datetime]


def _sends(steps: list[tuple[timedelta, timedelta]]) -> list[Send]:
    """(now, previous sent, sent) per send, every send acknowledged."""
    out: list[Send] = []
    now, last = START, None
    for clock_step, occurred in steps:
        now += clock_step
        sent: datetime = next_updated_at(now + occurred, last, now)
        out.append((now, last, sent))
        last = sent
    return out


@settings(max_examples=500)
@given(_SENDS)
def test_a_key_s_updated_at_never_goes_back_whatever_the_clocks(
    steps: list[tuple[timedelta, timedelta]],
) -> None:
    for now, last, sent in _sends(steps):
        assert sent >= now - UPDATED_AT_MAX_AGE
        if last is not None:
            assert sent >= last
        if last is None or last < now:
            # inside the window, and strictly after the previous send
            assert sent <= now
            assert last is None or sent > last
        else:
            # the clock reads earlier than the last send: that time again, no later
            assert sent == last


@settings(max_examples=500)
@given(_SENDS)
def test_with_a_clock_that_never_steps_back_every_send_is_inside_the_window(
    steps: list[tuple[timedelta, timedelta]],
) -> None:
    forward = [(abs(clock_step), occurred) for clock_step, occurred in steps]
    previous = None
    for now, _, sent in _sends(forward):
        assert now - UPDATED_AT_MAX_AGE <= sent <= now
        assert previous is None or sent >= previous
        previous = sent


def test_a_key_s_older_time_is_raised_to_a_millisecond_after_the_last_send() -> None:
    now = START
    last = now - timedelta(minutes=5)
    assert next_updated_at(now - timedelta(hours=1), last, now) == last + UPDATED_AT_STEP


def test_a_newer_time_in_the_window_is_sent_as_it_is() -> None:
    now = START
    occurred = now - timedelta(minutes=1)
    assert next_updated_at(occurred, now - timedelta(minutes=5), now) == occurred


def test_a_last_send_at_or_after_the_clock_is_sent_again_unchanged() -> None:
    now = START
    assert next_updated_at(now, now, now) == now
    ahead = now + timedelta(seconds=30)
    assert next_updated_at(now + timedelta(minutes=1), ahead, now) == ahead


def test_a_last_send_within_a_millisecond_of_the_clock_gives_the_clock() -> None:
    now = START
    last = now - timedelta(microseconds=400)
    assert next_updated_at(now - timedelta(hours=1), last, now) == now


def test_a_last_send_older_than_the_window_leaves_the_window_s_start() -> None:
    now = START
    assert (
        next_updated_at(now - timedelta(days=3), now - timedelta(days=2), now)
        == now - UPDATED_AT_MAX_AGE
    )
