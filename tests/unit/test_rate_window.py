"""domain/rate_window.py: how long until a request fits the rolling window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from domain.rate_window import seconds_until_room

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_room_is_immediate_while_under_the_limit() -> None:
    window = [(40_000, NOW + timedelta(seconds=10))]
    assert seconds_until_room(window, 100_000, 2_000, NOW) == 0.0


def test_room_waits_for_the_oldest_requests_to_leave_the_window() -> None:
    window = [(50_000, NOW + timedelta(seconds=30)), (49_000, NOW + timedelta(seconds=10))]
    # 99,000 used; 2,000 more need 1,000 freed: the request leaving in 10 s frees 49,000.
    assert seconds_until_room(window, 100_000, 2_000, NOW) == 10.0


def test_a_request_larger_than_the_limit_waits_for_an_empty_window() -> None:
    window = [(10, NOW + timedelta(seconds=5)), (10, NOW + timedelta(seconds=20))]
    assert seconds_until_room(window, 100, 2_000, NOW) == 20.0


@given(
    st.lists(st.tuples(st.integers(1, 5_000), st.integers(0, 60)), max_size=30),
    st.integers(1, 2_000),
)
def test_after_the_wait_the_request_fits(entries: list[tuple[int, int]], needed: int) -> None:
    limit = 10_000
    window = [(skus, NOW + timedelta(seconds=s)) for skus, s in entries]
    wait = seconds_until_room(window, limit, needed, NOW)
    later = NOW + timedelta(seconds=wait)
    still_counted = sum(skus for skus, leaves in window if leaves > later)
    assert wait >= 0
    assert still_counted + min(needed, limit) <= limit
