"""Pure validation of a `PUT /v2/campaigns/{campaignId}/offers/stocks` request, as the Market's."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar, cast

from domain.market_rules import (
    BODY_BYTES_MAX,
    COUNT_MAX,
    SKU_PATTERN,
    SKUS_PER_REQUEST_MAX,
    normalize_sku,
)

# The Market's own age limit (domain.market_rules.UPDATED_AT_MAX_AGE is the client's, with margin).
MARKET_UPDATED_AT_MAX_AGE = timedelta(days=1)
_TOP_LEVEL_FIELDS = frozenset({"skus"})
_SKU_FIELDS = frozenset({"sku", "items"})
_ITEM_FIELDS = frozenset({"count", "updatedAt"})
# OpenAPI `date-time` is RFC 3339: a full date, `T`, a full time and a mandatory offset.
# fromisoformat alone would also take dates without time or offset, and ISO "basic" forms.
_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)
_CAMPAIGN_ID = re.compile(r"^[0-9]{1,18}$", re.ASCII)


@dataclass(frozen=True, slots=True)
class ApiError:
    """One entry of the Market's `errors[]`: a code and a human-readable message."""

    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        """The entry as the Market's JSON shape."""
        return {"code": self.code, "message": self.message}


class RequestRejected(Exception):
    """The whole request is refused with 400, whatever the partial-400 setting."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per SKU
class StockUpdate:
    """One valid SKU of a request: normalized SKU, count, updatedAt (None: time of receipt)."""

    sku: str
    count: int
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Validated:
    """The SKU-level outcome of a request: the valid updates and one error per bad SKU."""

    updates: list[StockUpdate]
    errors: list[ApiError]
    bad_skus: list[str]


class _HasSku(Protocol):
    @property
    def sku(self) -> str: ...


_Update = TypeVar("_Update", bound=_HasSku)


def settle(
    updates: list[_Update], errors: list[ApiError], refuse: Collection[str], partial_400: bool
) -> tuple[list[_Update], list[ApiError]]:
    """The updates to apply and the errors to answer once `refuse` SKUs get a 400 each."""
    refused = [u for u in updates if u.sku in refuse]
    if refused:
        updates = [u for u in updates if u.sku not in refuse]
        errors = errors + [
            ApiError("BAD_REQUEST", f"Stock for '{u.sku}' is refused by the sandbox")
            for u in refused
        ]
    if errors and not partial_400:
        updates = []  # the whole request is refused: nothing is applied
    return updates, errors


def parse_campaign_id(raw: str) -> int | None:
    """The campaign id of a path segment, or None when it is not an integer ≥ 1."""
    if not _CAMPAIGN_ID.match(raw):
        return None
    value = int(raw)
    return value if value >= 1 else None


def reject(code: str, message: str) -> RequestRejected:
    """The RequestRejected of one Market error."""
    return RequestRejected(ApiError(code, message))


def json_object(raw: bytes, allowed: frozenset[str], *, empty_is_object: bool = False) -> Any:
    """The JSON object of a body, all its fields in `allowed`; RequestRejected otherwise."""
    body: Any = {}
    if raw.strip() or not empty_is_object:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise reject("BAD_REQUEST", f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise reject("BAD_REQUEST", "Request body must be a JSON object")
    unknown = body.keys() - allowed
    if unknown:
        raise reject("UNKNOWN_PARAMETER", f"Unknown field '{sorted(unknown)[0]}' in request")
    return body


def body_list(raw: bytes, allowed: frozenset[str], field: str) -> list[Any]:
    """The array `field` of a stock-update body; RequestRejected for size, JSON or shape."""
    if len(raw) > BODY_BYTES_MAX:
        raise reject(
            "BAD_REQUEST", f"Request body of {len(raw)} bytes exceeds the limit of {BODY_BYTES_MAX}"
        )
    body = json_object(raw, allowed)
    if field not in body:
        raise reject("MISSING_PARAM", f"Field '{field}' is required")
    items = body[field]
    if not isinstance(items, list):
        raise reject("BAD_REQUEST", f"Field '{field}' must be an array")
    return items


def check_item_count(field: str, items: Sequence[Any], most: int) -> None:
    """RequestRejected unless the array `field` has 1 … `most` items."""
    if not 1 <= len(items) <= most:
        raise reject(
            "BAD_REQUEST", f"Field '{field}' must contain 1 … {most} items, got {len(items)}"
        )


def decode_body(raw: bytes) -> list[Any]:
    """The `skus` list of a body; raises RequestRejected for size, JSON or top-level errors."""
    return body_list(raw, _TOP_LEVEL_FIELDS, "skus")


_FUTURE = "future"
_OLD = "old"
_INVALID = "invalid"


def _updated_at_verdict(raw: object, now: datetime) -> datetime | str:
    """The parsed time of an in-window date-time with offset; else _INVALID, _FUTURE or _OLD."""
    if not isinstance(raw, str) or not _DATE_TIME.match(raw):
        return _INVALID
    try:
        parsed = datetime.fromisoformat(raw.upper())
    except ValueError:  # the shape fits but the values do not (month 13, second 60 …)
        return _INVALID
    if parsed > now:
        return _FUTURE
    if parsed < now - MARKET_UPDATED_AT_MAX_AGE:
        return _OLD
    return parsed


def _unknown_field(keys: Iterable[str], allowed: frozenset[str], sku: str) -> ApiError:
    name = min(set(keys) - allowed)
    return ApiError("UNKNOWN_PARAMETER", f"Unknown field '{name}' in stock for '{sku}'")


def _check_entry(  # noqa: PLR0911 - one return per rule keeps "first error wins" readable
    entry: dict[str, Any], sku: str, now: datetime, verdicts: dict[str, datetime | str]
) -> StockUpdate | ApiError:
    """The update of one SKU entry whose `sku` is already valid, or the first error it has.

    Counting keys instead of building key sets, and caching the verdict per updatedAt text
    (a batch usually shares a few), keeps 2,000 SKUs within a few milliseconds.
    """
    if len(entry) != 1 + ("items" in entry):  # `sku` is known to be there
        return _unknown_field(entry, _SKU_FIELDS, sku)
    items = entry.get("items")
    if type(items) is not list or len(items) != 1:
        return ApiError("BAD_REQUEST", f"Stock for '{sku}' must have exactly one item in 'items'")
    item = items[0]
    if type(item) is not dict:
        return ApiError("BAD_REQUEST", f"Item of stock for '{sku}' must be an object")
    if len(item) != ("count" in item) + ("updatedAt" in item):
        return _unknown_field(item, _ITEM_FIELDS, sku)
    if "count" not in item:
        return ApiError("MISSING_PARAM", f"Stock for '{sku}' has no count")
    count = item["count"]
    # type() rather than isinstance(): True is an int to Python but not to JSON Schema.
    if type(count) is not int or not 0 <= count <= COUNT_MAX:
        return ApiError(
            "BAD_REQUEST",
            f"Stock for '{sku}' has invalid count {json.dumps(count)}: "
            f"an integer 0 … {COUNT_MAX} expected",
        )
    raw_at = item.get("updatedAt")
    if raw_at is None:  # absent or null: the Market uses the time of receipt
        return StockUpdate(sku, count, None)
    verdict = verdicts.get(raw_at) if type(raw_at) is str else None
    if verdict is None:
        verdict = _updated_at_verdict(raw_at, now)
        if type(raw_at) is str:
            verdicts[raw_at] = verdict
    if type(verdict) is datetime:
        return StockUpdate(sku, count, verdict)
    if verdict == _FUTURE:
        return ApiError("BAD_REQUEST", f"Stock for '{sku}' should not be in the future")
    if verdict == _OLD:
        return ApiError("BAD_REQUEST", f"Stock for '{sku}' should not be older than a day")
    return ApiError(
        "BAD_REQUEST",
        f"Stock for '{sku}' has invalid updatedAt {json.dumps(raw_at)}: "
        "an ISO 8601 date-time with offset expected",
    )


def validate_skus(skus: list[Any], now: datetime, warehouse: int) -> Validated:
    """Checks every SKU entry; raises RequestRejected when the number of entries is out of range.

    A duplicated SKU refuses all its occurrences (which one the caller meant is unknowable);
    `warehouse` only names the place in the duplicate message, as the Market's text does.
    """
    if not 1 <= len(skus) <= SKUS_PER_REQUEST_MAX:
        raise reject(
            "BAD_REQUEST",
            f"Field 'skus' must contain 1 … {SKUS_PER_REQUEST_MAX} items, got {len(skus)}",
        )
    verdicts: dict[str, datetime | str] = {}
    # (SKU as the Market compares it, or None when it has no valid SKU; label; outcome)
    outcomes: list[tuple[str | None, str, StockUpdate | ApiError]] = []
    occurrences: dict[str, int] = {}
    for index, entry in enumerate(skus):
        if type(entry) is not dict:
            error = ApiError("BAD_REQUEST", f"skus[{index}] must be an object")
            outcomes.append((None, f"#{index}", error))
            continue
        raw_sku = entry.get("sku")
        if type(raw_sku) is not str:
            error = ApiError("MISSING_PARAM", f"skus[{index}].sku must be a string")
            outcomes.append((None, f"#{index}", error))
            continue
        sku = normalize_sku(raw_sku)
        if SKU_PATTERN.fullmatch(sku) is None:
            error = ApiError("INVALID_SHOP_SKU", f"Invalid shop-sku '{raw_sku}'")
            outcomes.append((None, raw_sku, error))
            continue
        occurrences[sku] = occurrences.get(sku, 0) + 1
        outcomes.append((sku, sku, _check_entry(entry, sku, now, verdicts)))

    updates: list[StockUpdate] = []
    errors: list[ApiError] = []
    bad_skus: list[str] = []
    has_duplicates = sum(occurrences.values()) != len(occurrences)
    reported: set[str] = set()
    for name, label, outcome in outcomes:
        if has_duplicates and name is not None and occurrences[name] > 1:
            if name not in reported:  # one error per duplicated SKU, not per occurrence
                reported.add(name)
                message = f"Duplicate shop-sku '{name}' for warehouse '{warehouse}'"
                errors.append(ApiError("DUPLICATE_SHOP_SKU", message))
                bad_skus.append(name)
        elif type(outcome) is StockUpdate:
            updates.append(outcome)
        else:
            errors.append(cast(ApiError, outcome))
            bad_skus.append(label)
    return Validated(updates, errors, bad_skus)
