"""Pure rules of the sandbox's read methods: request checks, page tokens, answer shapes.

See sandbox.stock_reads for the methods; nothing here does I/O or holds state.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.market_rules import BODY_BYTES_MAX, COUNT_MAX, SKU_PATTERN, normalize_sku
from sandbox.config import SandboxConfig
from sandbox.rules import check_item_count, json_object, reject

READ_OFFER_IDS_MAX = 500
READ_PAGE_LIMIT_MAX = 100  # the Market cut the page from 200 to 100 in August 2026
READ_PAGE_LIMIT_DEFAULT = 100
# The stock types whose count is the one updateStocks sent (which one is not documented).
SENT_STOCK_TYPES = ("FIT", "AVAILABLE")
RETURNS_COUNT_SHIFT = 1  # the returns warehouse's counts differ from the seller's by this

_V2_FIELDS = frozenset({"offerIds", "stocksWarehouseId", "hasStocks", "withTurnover", "archived"})
_V3_FIELDS = frozenset({"partnerWarehouseId", "offerIds", "archived"})
_TOKEN_PREFIX = "stocksync-sandbox:"  # noqa: S105 - a page marker, not a secret

Offer = tuple[str, int, datetime]  # (offerId, count, updatedAt)


def read_limit(config: SandboxConfig, method: str) -> int | None:
    """The limit of a read window: "v2" offers per campaign, "v3" requests per business."""
    return config.read_offers_per_minute if method == "v2" else config.v3_read_requests_per_minute


def seller_warehouse_id(config: SandboxConfig, campaign: int, listed: int | None = None) -> int:
    """The campaign's own warehouse in read answers.

    `listed` (the warehouse the accounts list with this campaignId) first, so a read answer names
    the warehouse discovery shows; else `warehouse_ids`, else campaign id * 10.
    """
    if listed is not None:
        return listed
    return config.warehouse_ids.get(campaign, campaign * 10)


def encode_page_token(after: str) -> str:
    """An opaque token that resumes a paged read after the SKU `after`."""
    return base64.urlsafe_b64encode((_TOKEN_PREFIX + after).encode()).decode().rstrip("=")


def decode_page_token(token: str) -> str:
    """The SKU a token resumes after; RequestRejected when this sandbox did not make it."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_TOKEN_PREFIX):
        raise reject("BAD_REQUEST", f"Query parameter 'page_token' is not a valid token: {token!r}")
    return text[len(_TOKEN_PREFIX) :]


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """A valid read: the SKUs asked (None: paged), the page's start and size, the warehouse."""

    offer_ids: list[str] | None
    after: str | None
    limit: int
    warehouse: int | None  # v2 stocksWarehouseId filter, v3 partnerWarehouseId


def _positive_id(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise reject("BAD_REQUEST", f"Field '{name}' must be an integer ≥ 1, got {value!r}")
    return value


def _offer_ids(raw: object) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise reject("BAD_REQUEST", "Field 'offerIds' must be an array")
    check_item_count("offerIds", raw, READ_OFFER_IDS_MAX)
    skus: list[str] = []
    for index, item in enumerate(raw):
        sku = normalize_sku(item) if isinstance(item, str) else None
        if sku is None or SKU_PATTERN.fullmatch(sku) is None:
            raise reject("INVALID_SHOP_SKU", f"offerIds[{index}] is not a valid SKU: {item!r}")
        skus.append(sku)
    if len(set(skus)) != len(skus):
        duplicate = next(s for s in skus if skus.count(s) > 1)
        raise reject("BAD_REQUEST", f"Field 'offerIds' must be unique: '{duplicate}' repeats")
    return skus


def parse_read(raw: bytes, query: Mapping[str, list[str]], *, v3: bool) -> ReadQuery:
    """The read a body and query ask for; RequestRejected names the field and the rule broken."""
    if len(raw) > BODY_BYTES_MAX:
        raise reject("BAD_REQUEST", f"Request body of {len(raw)} bytes exceeds {BODY_BYTES_MAX}")
    body = json_object(raw, _V3_FIELDS if v3 else _V2_FIELDS, empty_is_object=True)
    for name in ("hasStocks", "withTurnover", "archived"):
        if body.get(name) is not None and type(body[name]) is not bool:
            raise reject("BAD_REQUEST", f"Field '{name}' must be true or false")
    if v3 and body.get("partnerWarehouseId") is None:
        raise reject("MISSING_PARAM", "Field 'partnerWarehouseId' is required")
    warehouse = _positive_id(body, "partnerWarehouseId" if v3 else "stocksWarehouseId")
    offer_ids = _offer_ids(body.get("offerIds"))
    tokens, limits = query.get("page_token") or query.get("pageToken"), query.get("limit")
    token, raw_limit = tokens[0] if tokens else None, limits[0] if limits else None
    if offer_ids is not None and (token is not None or raw_limit is not None):
        raise reject(
            "BAD_REQUEST",
            "Field 'offerIds' cannot be combined with page_token or limit: "
            "the list is answered whole",
        )
    limit = READ_PAGE_LIMIT_DEFAULT
    if raw_limit is not None:
        limit = int(raw_limit) if raw_limit.isdigit() else 0
        if not 1 <= limit <= READ_PAGE_LIMIT_MAX:
            raise reject(
                "BAD_REQUEST",
                f"Query parameter 'limit' must be an integer 1 … {READ_PAGE_LIMIT_MAX}, "
                f"got {raw_limit!r}",
            )
    after = decode_page_token(token) if token is not None else None
    return ReadQuery(offer_ids, after, limit, warehouse)


def offer_json(offer: Offer, shift: int = 0) -> dict[str, Any]:
    """One WarehouseOfferDTO: FIT and AVAILABLE carry the stored count (plus `shift`)."""
    sku, count, updated_at = offer
    return {
        "offerId": sku,
        "updatedAt": updated_at.isoformat(),
        "stocks": [{"type": kind, "count": count + shift} for kind in SENT_STOCK_TYPES],
    }


def paging_json(offers: Sequence[Offer], more: bool) -> dict[str, str]:
    """PackagingForwardScrollingPagerDTO: a next token only when more offers follow."""
    return {"nextPageToken": encode_page_token(offers[-1][0])} if more and offers else {}


def v2_result(
    config: SandboxConfig,
    campaign: int,
    offers: Sequence[Offer],
    more: bool,
    only: int | None,
    *,
    listed: int | None = None,
) -> dict[str, Any]:
    """GetWarehouseStocksDTO: the returns warehouse (when configured) first, then the seller's."""
    places: list[tuple[int, int]] = []
    if campaign in config.returns_warehouse_campaigns:
        places.append((config.returns_warehouse_id, RETURNS_COUNT_SHIFT))
    places.append((seller_warehouse_id(config, campaign, listed), 0))
    warehouses = [
        {"warehouseId": wid, "offers": [offer_json(o, shift) for o in offers]}
        for wid, shift in places
        if offers and (only is None or only == wid)
    ]
    return {"paging": paging_json(offers, more), "warehouses": warehouses}


@dataclass(frozen=True, slots=True)
class StockTarget:
    """Where a control writes: a v2 campaign, or a v3 (business, partnerWarehouseId)."""

    campaign: int | None
    business: int | None = None
    warehouse: int | None = None


def control_int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int or value < 1:
        raise ValueError(f"field {name!r} must be an integer ≥ 1, got {value!r}")
    return value


def parse_target(body: Mapping[str, Any], extra: frozenset[str]) -> StockTarget:
    """The target of a control body: `campaign`, or `business` with `partnerWarehouseId`."""
    unknown = body.keys() - extra - {"campaign", "business", "partnerWarehouseId"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
    if "campaign" in body:
        return StockTarget(control_int(body, "campaign"))
    if "business" in body:
        return StockTarget(
            None, control_int(body, "business"), control_int(body, "partnerWarehouseId")
        )
    raise ValueError("field 'campaign' (v2) or 'business' and 'partnerWarehouseId' (v3) required")


def parse_counts(raw: object) -> dict[str, int]:
    """The `skus` of a drift body: a non-empty object SKU -> count 0 … 2e9."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError("field 'skus' must be a non-empty object of SKU -> count")
    counts: dict[str, int] = {}
    for sku, count in raw.items():
        if type(count) is not int or not 0 <= count <= COUNT_MAX:
            raise ValueError(f"field 'skus': count of {sku!r} must be 0 … {COUNT_MAX}")
        counts[normalize_sku(sku)] = count
    return counts


def parse_skus(raw: object) -> list[str]:
    """The `skus` of a drop body: a non-empty list of SKUs."""
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) for s in raw):
        raise ValueError("field 'skus' must be a non-empty list of SKUs")
    return [normalize_sku(s) for s in raw]


def parse_time(raw: object) -> datetime:
    """A drift's `updatedAt`: an ISO 8601 date-time with offset (absent: now)."""
    if raw is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValueError(f"field 'updatedAt' must be a date-time with offset, got {raw!r}")
    return parsed
