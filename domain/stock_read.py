"""Reading stock back: the getStocks answer parsed, the campaign's warehouse chosen, drift told.

Pure: no I/O. The v2 answer is `result.warehouses[{warehouseId, offers[{offerId, updatedAt,
stocks[{type, count}]}]}]`; only the campaign's own warehouse counts (a Market returns warehouse
beside it is ignored), and in it only the stock entry of the configured type. The v3 answer
(`POST /v3/businesses/{id}/offers/stocks`) is `result.partnerWarehouseId` and `result.offers`,
the same offers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.market_rules import clamp_count

READ_OFFER_IDS_MAX = 500  # getStocks answers at most 500 offerIds at once


@dataclass(frozen=True, slots=True)
class MarketStock:
    """One offer as the Market shows it: the count of the configured type (None: no such entry)."""

    count: int | None
    updated_at: datetime | None


class DriftKind(StrEnum):
    """How a key differs at the Market."""

    MISSING = "missing"
    COUNT = "count"


class AnswerError(ValueError):
    """The answer is not the shape getStocks promises; the message names the field."""


def _time(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _offers(offers: object, where: str, stock_type: str) -> dict[str, MarketStock]:
    """offerId -> the count of `stock_type`, from a list of WarehouseOfferDTO at `where`."""
    if not isinstance(offers, list):
        raise AnswerError(f"{where} must be an array")
    parsed: dict[str, MarketStock] = {}
    for offer in offers:
        if not isinstance(offer, dict) or not isinstance(offer.get("offerId"), str):
            raise AnswerError(f"{where}[].offerId must be a string")
        count = None
        for stock in offer.get("stocks") or []:
            if isinstance(stock, dict) and stock.get("type") == stock_type:
                raw = stock.get("count")
                count = raw if type(raw) is int else None
        parsed[offer["offerId"]] = MarketStock(count, _time(offer.get("updatedAt")))
    return parsed


def parse_warehouses(body: Any, stock_type: str) -> dict[int, dict[str, MarketStock]]:
    """Every warehouse of a getStocks answer: offerId -> the offer's count of `stock_type`."""
    result = body.get("result") if isinstance(body, dict) else None
    warehouses = result.get("warehouses") if isinstance(result, dict) else None
    if not isinstance(warehouses, list):
        raise AnswerError("result.warehouses must be an array")
    parsed: dict[int, dict[str, MarketStock]] = {}
    for w in warehouses:
        if not isinstance(w, dict) or type(w.get("warehouseId")) is not int:
            raise AnswerError("result.warehouses[].warehouseId must be an integer")
        place = parsed.setdefault(w["warehouseId"], {})
        place.update(_offers(w.get("offers") or [], "result.warehouses[].offers", stock_type))
    return parsed


def parse_v3_offers(body: Any, warehouse_id: int, stock_type: str) -> dict[str, MarketStock]:
    """The offers of the v3 read's answer (`result.partnerWarehouseId`, `result.offers`), which
    must be of the partner warehouse asked for."""
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise AnswerError("result must be an object")
    if result.get("partnerWarehouseId") != warehouse_id:
        got = result.get("partnerWarehouseId")
        raise AnswerError(f"result.partnerWarehouseId is {got!r}, not {warehouse_id}")
    return _offers(result.get("offers") or [], "result.offers", stock_type)


class UnknownWarehouse(ValueError):
    """An answer holds several warehouses and the campaign's own is not known."""


def own_warehouse(
    warehouses: Mapping[int, Mapping[str, MarketStock]], known: int | None
) -> int | None:
    """The campaign's warehouse in an answer: `known` when learned; else the only one; None when
    the answer has none (no offer held). UnknownWarehouse when several and none is known."""
    if known is not None:
        return known
    if not warehouses:
        return None
    if len(warehouses) == 1:
        return next(iter(warehouses))
    listed = ", ".join(str(w) for w in sorted(warehouses))
    raise UnknownWarehouse(
        f"the answer holds warehouses {listed} and the campaign's own is unknown "
        "(not listed by POST /v2/businesses/{businessId}/warehouses)"
    )


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """One key read back: what we acknowledged, what the Market shows, and the verdict."""

    sku: str
    acked_value: int
    market: MarketStock | None
    drift: DriftKind | None


def check_keys(
    acked: Sequence[tuple[str, int]], offers: Mapping[str, MarketStock] | None
) -> list[KeyCheck]:
    """Each key's verdict: missing at the Market, another count, or none (the same)."""
    checks = []
    for sku, value in acked:
        market = (offers or {}).get(sku)
        if market is None or market.count is None:
            drift: DriftKind | None = DriftKind.MISSING
        elif market.count != clamp_count(value):
            drift = DriftKind.COUNT
        else:
            drift = None
        checks.append(KeyCheck(sku, value, market, drift))
    return checks


def repairs_allowed(recent_drifts: int) -> bool:
    """A key with 3 drifts in the last 24 h is repaired no more: its 4th says someone else writes
    it."""
    return recent_drifts < KEEPS_DRIFTING_AFTER


KEEPS_DRIFTING_AFTER = 3
KEEPS_DRIFTING_HOURS = 24


def sweep_allowance(
    round_keys: int, round_checked: int, elapsed_seconds: float, period_seconds: float
) -> int:
    """Keys a paced sweep may read now: the round's keys spread evenly over 90 % of the period
    (a margin so every key is read again within the period), less what was read already."""
    if period_seconds <= 0:
        return 0
    share = min(1.0, max(0.0, elapsed_seconds) / (0.9 * period_seconds))
    if share >= 1.0:
        # The pace is spent: keys that joined the round late (pending when it was counted) are
        # read now, a batch a pass, until the round finds none left and ends.
        return max(READ_OFFER_IDS_MAX, round_keys - round_checked)
    return max(0, math.ceil(round_keys * share) - round_checked)
