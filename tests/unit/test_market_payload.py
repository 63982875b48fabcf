"""domain/market_payload.py: the body of the v2 PUT, exactly as the Market's page says."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from domain.market_payload import PendingStock, format_updated_at, stocks_body

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
