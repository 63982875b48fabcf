"""The bodies of `PUT /v2/campaigns/{campaignId}/offers/stocks` (exactly as the Market's page says)
and of `POST /v3/businesses/{businessId}/offers/stocks/update` (CONTRACT 3a)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from domain.market_rules import clamp_count, updated_at_for_sending


@dataclass(frozen=True, slots=True)
class PendingStock:
    """A claimed key as read at sending time: the version the Market's 200 will acknowledge."""

    sku: str
    value: int
    version: int
    last_occurred_at: datetime
    group_id: int = 0  # the key's group (for v3: its campaign, hence its warehouse)


def format_updated_at(moment: datetime) -> str:
    """ISO 8601 with an offset, in UTC: `2026-11-29T07:21:10.700928+00:00`."""
    return moment.astimezone(UTC).isoformat()


def stocks_body(stocks: Iterable[PendingStock], now: datetime) -> bytes:
    """The JSON body: one entry per SKU, count clamped, updatedAt moved into the Market's window."""
    entries = [
        {
            "sku": s.sku,
            "items": [
                {
                    "count": clamp_count(s.value),
                    "updatedAt": format_updated_at(updated_at_for_sending(s.last_occurred_at, now)),
                }
            ],
        }
        for s in stocks
    ]
    return json.dumps({"skus": entries}, ensure_ascii=False, separators=(",", ":")).encode()


def v3_stocks_body(items: Iterable[tuple[PendingStock, int]], now: datetime) -> bytes:
    """The v3 JSON body for (stock, partnerWarehouseId) items: count and updatedAt as in v2."""
    entries = [
        {
            "sku": s.sku,
            "partnerWarehouseId": warehouse,
            "count": clamp_count(s.value),
            "updatedAt": format_updated_at(updated_at_for_sending(s.last_occurred_at, now)),
        }
        for s, warehouse in items
    ]
    return json.dumps({"skuItems": entries}, ensure_ascii=False, separators=(",", ":")).encode()
