"""The bodies of `PUT /v2/campaigns/{campaignId}/offers/stocks` (exactly as the Market's page says)
and of `POST /v3/businesses/{businessId}/offers/stocks/update` (CONTRACT 3a)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from domain.market_rules import clamp_count, updated_at_for_sending


@dataclass(frozen=True, slots=True)
class PendingStock:
    """A claimed key as read at sending time: the version the Market's 200 will acknowledge."""

    sku: str
    value: int
    version: int
    last_occurred_at: datetime
    sent_updated_at: datetime | None = None  # the updatedAt of its last acknowledged send
    group_id: int = 0  # the key's group (for v3: its campaign, hence its warehouse)


# The least step of a key's updatedAt from one send to the next.
UPDATED_AT_STEP = timedelta(milliseconds=1)


def next_updated_at(occurred_at: datetime, last_sent: datetime | None, now: datetime) -> datetime:
    """A key's updatedAt at `now`: its time moved into the window [now - 23 h, now], raised to
    1 ms after `last_sent` as far as `now` allows; never before `last_sent` (equal to it when
    `now` reads earlier: a clock that stepped back)."""
    moved = updated_at_for_sending(occurred_at, now)
    if last_sent is None:
        return moved
    # last_sent was accepted by the Market, so its clock has passed it: sending it again is
    # never "in the future" there, even when our clock now reads earlier.
    return max(moved, min(last_sent + UPDATED_AT_STEP, max(now, last_sent)))


def updated_at_to_send(stock: PendingStock, now: datetime) -> datetime:
    """The updatedAt to send for `stock` at `now` (`next_updated_at`)."""
    return next_updated_at(stock.last_occurred_at, stock.sent_updated_at, now)


def format_updated_at(moment: datetime) -> str:
    """ISO 8601 with an offset, in UTC: `2026-11-29T07:21:10.700928+00:00`."""
    return moment.astimezone(UTC).isoformat()


def stocks_body(stocks: Iterable[PendingStock], now: datetime) -> bytes:
    """The JSON body: one entry per SKU, count clamped, updatedAt `updated_at_to_send`."""
    entries = [
        {
            "sku": s.sku,
            "items": [
                {
                    "count": clamp_count(s.value),
                    "updatedAt": format_updated_at(updated_at_to_send(s, now)),
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
            "updatedAt": format_updated_at(updated_at_to_send(s, now)),
        }
        for s, warehouse in items
    ]
    return json.dumps({"skuItems": entries}, ensure_ascii=False, separators=(",", ":")).encode()
