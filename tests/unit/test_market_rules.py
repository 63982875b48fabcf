"""The Market's rules as the drain applies them: answers, refused SKUs, windows, backoff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.market_rules import answer_kind, skus_named

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
