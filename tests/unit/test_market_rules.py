"""The Market's rules as the drain applies them: answers, refused SKUs, windows, backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from domain.backoff import backoff_seconds
from domain.market_rules import answer_kind, skus_named
from domain.rate_window import seconds_until_room

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "ok"),
        (400, "refused"),
        (401, "parked"),
        (403, "parked"),
        (404, "parked"),
        (420, "rate_limited"),
        (500, "retry"),
        (503, "retry"),
        (0, "retry"),
        (413, "unexpected"),
    ],
)
def test_each_market_status_has_one_meaning(status: int, kind: str) -> None:
    assert answer_kind(status) == kind


def test_refused_skus_are_found_in_the_markets_messages() -> None:
    messages = [
        "Stock for 'B-2' should not be older than a day",
        "Duplicate shop-sku 'C-3' for warehouse '5'",
        "Stock for 'not-in-batch' should not be in the future",
    ]
    named = skus_named(messages, {"A-1", "B-2", "C-3"})
    assert set(named) == {"B-2", "C-3"}
    assert named["B-2"] == messages[0]


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


def test_backoff_grows_is_bounded_and_never_zero() -> None:
    rng = random.Random(7)
    delays = [[backoff_seconds(a, base=0.5, cap=4.0, rng=rng) for a in range(8)] for _ in range(50)]
    assert all(0.25 <= d[0] <= 0.5 for d in delays)
    assert all(2.0 <= d[7] <= 4.0 for d in delays)
    assert min(min(d) for d in delays) > 0


def test_an_http_date_without_a_zone_is_read_as_utc() -> None:
    from datetime import UTC, datetime

    from worker.market_client import http_date

    assert http_date("Wed, 02 Dec 2026 15:00:00 -0000") == datetime(2026, 12, 2, 15, tzinfo=UTC)
    assert http_date("Wed, 02 Dec 2026 15:00:00 GMT") == datetime(2026, 12, 2, 15, tzinfo=UTC)
    assert http_date("Wed, 02 Dec 2026 18:00:00 +0300") == datetime(2026, 12, 2, 15, tzinfo=UTC)
    assert http_date("not a date") is None
    assert http_date(None) is None
