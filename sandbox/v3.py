"""The Market's `POST /v3/businesses/{businessId}/offers/stocks/update` and its stock store.

Store shape (`V3Store`, reached as `SandboxState.v3`; the one v3 store: the v3 update writes it,
the v3 read `POST /v3/businesses/{id}/offers/stocks` and the drift/drop controls read and change it,
and its `begin`/`end` are the one per-business parallel counter that v3 reads and updates share):

    stock: {business_id: {partner_warehouse_id: {sku: (count, updatedAt, accepted_at)}}}

with ints for ids, the SKU as the Market compares it (trimmed, `domain.market_rules.normalize_sku`),
`count` an int and both times timezone-aware UTC datetimes (`updatedAt` is the time of receipt when
the request had none). Last write wins; an older updatedAt still overwrites and counts as stale.
JSON of `GET /_sandbox/v3/state`: `{"businesses": {"901": {"7001": {"SKU": {"count": 5,
"updatedAt": "…", "accepted_at": "…"}}}}}`; `?business=901` gives `{"business": 901,
"warehouses": {…}}`, and with `&warehouse=7001` `{"business": 901, "warehouse": 7001, "skus": {…}}`.

Rules of the body (official OpenAPI `UpdateStocksOnWarehousesRequest`): `{"skuItems": [{"sku",
"partnerWarehouseId", "count", "updatedAt"?}]}`, 1 … 2,000 items, each (sku, partnerWarehouseId)
once, count an integer 0 … 2e9, updatedAt neither in the future nor older than a day, body ≤ 512 KB,
SKU as v2's; a warehouse the business does not have (when the sandbox knows the business) is a 400
naming it. Limits per business: `requests_per_minute` requests (2xx and 4xx answers count) in a
rolling `window_seconds`, `max_parallel_requests` in flight; 420 with X-RateLimit-Resource-*.
"""

from __future__ import annotations

import bisect
import json
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs

from domain.market_rules import PARALLEL_REQUESTS_MAX, SKU_PATTERN, normalize_sku
from sandbox.config import ConfigError, forced_statuses
from sandbox.ledger import plain
from sandbox.read_rules import Offer
from sandbox.rules import (
    ApiError,
    RequestRejected,
    StockUpdate,
    _check_entry,
    body_list,
    check_item_count,
    parse_campaign_id,
    settle,
)
from sandbox.state import (
    GatedStore,
    ParallelGate,
    RollingWindow,
    reserve_in,
    stock_json,
    window_headers,
)

if TYPE_CHECKING:
    from sandbox.handler import SandboxHandler

ITEMS_PER_REQUEST_MAX = 2000
REQUESTS_PER_MINUTE = 50
_TOP_LEVEL_FIELDS = frozenset({"skuItems"})
_ITEM_FIELDS = frozenset({"sku", "partnerWarehouseId", "count", "updatedAt"})
_UPDATE_PATH = re.compile(r"^/v3/businesses/([^/]+)/offers/stocks/update/?$")


# --- pure rules -------------------------------------------------------------------------------


@dataclass(slots=True)
class WarehouseUpdate:
    """One valid item: partner warehouse, normalized SKU, count, updatedAt (None: receipt)."""

    warehouse: int
    sku: str
    count: int
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class ValidatedV3:
    """The item-level outcome: valid updates and one error per bad item (or pair, or warehouse)."""

    updates: list[WarehouseUpdate]
    errors: list[ApiError]


def decode_v3_body(raw: bytes) -> list[Any]:
    """The `skuItems` list of a body; RequestRejected for size, JSON, shape or item count."""
    items = body_list(raw, _TOP_LEVEL_FIELDS, "skuItems")
    check_item_count("skuItems", items, ITEMS_PER_REQUEST_MAX)
    return items


def _check_item(  # noqa: PLR0911 - one return per rule keeps "first error wins" readable
    index: int, item: object, now: datetime, verdicts: dict[str, Any]
) -> tuple[int, str, StockUpdate] | ApiError:
    """(warehouse, sku, update) of one item, or its first error; count/updatedAt as v2's."""
    if type(item) is not dict:
        return ApiError("BAD_REQUEST", f"skuItems[{index}] must be an object")
    raw_sku = item.get("sku")
    if type(raw_sku) is not str:
        return ApiError("MISSING_PARAM", f"skuItems[{index}].sku must be a string")
    sku = normalize_sku(raw_sku)
    if SKU_PATTERN.fullmatch(sku) is None:
        return ApiError("INVALID_SHOP_SKU", f"Invalid shop-sku '{raw_sku}'")
    unknown = item.keys() - _ITEM_FIELDS
    if unknown:
        return ApiError("UNKNOWN_PARAMETER", f"Unknown field '{min(unknown)}' in stock for '{sku}'")
    warehouse = item.get("partnerWarehouseId")
    if type(warehouse) is not int or warehouse < 1:
        return ApiError(
            "BAD_REQUEST",
            f"Stock for '{sku}' has invalid partnerWarehouseId {json.dumps(warehouse)}: "
            "an integer ≥ 1 expected",
        )
    # The count and updatedAt rules, and their texts, are v2's: check them as a v2 entry.
    inner = {k: item[k] for k in ("count", "updatedAt") if k in item}
    outcome = _check_entry({"sku": sku, "items": [inner]}, sku, now, verdicts)
    if isinstance(outcome, ApiError):
        return outcome
    return warehouse, sku, outcome


def validate_v3_items(
    items: Sequence[Any], now: datetime, business: int, known_warehouses: frozenset[int] | None
) -> ValidatedV3:
    """Checks every item of a decoded body (see decode_v3_body for the count of items).

    A duplicated (sku, partnerWarehouseId) pair refuses all its occurrences; an unknown warehouse
    gets one error naming it (`known_warehouses` None: every warehouse is known).
    """
    verdicts: dict[str, Any] = {}
    outcomes = [_check_item(i, item, now, verdicts) for i, item in enumerate(items)]
    pairs: dict[tuple[int, str], int] = defaultdict(int)
    for outcome in outcomes:
        if not isinstance(outcome, ApiError):
            pairs[(outcome[0], outcome[1])] += 1
    updates: list[WarehouseUpdate] = []
    errors: list[ApiError] = []
    reported_pairs: set[tuple[int, str]] = set()
    reported_warehouses: set[int] = set()
    for outcome in outcomes:
        if isinstance(outcome, ApiError):
            errors.append(outcome)
            continue
        warehouse, sku, update = outcome
        if known_warehouses is not None and warehouse not in known_warehouses:
            if warehouse not in reported_warehouses:
                reported_warehouses.add(warehouse)
                message = f"Warehouse '{warehouse}' is not a warehouse of businessId {business}"
                errors.append(ApiError("WAREHOUSE_NOT_FOUND", message))
        elif pairs[(warehouse, sku)] > 1:
            if (warehouse, sku) not in reported_pairs:
                reported_pairs.add((warehouse, sku))
                message = f"Duplicate shop-sku '{sku}' for warehouse '{warehouse}'"
                errors.append(ApiError("DUPLICATE_SHOP_SKU", message))
        else:
            updates.append(WarehouseUpdate(warehouse, sku, update.count, update.updated_at))
    return ValidatedV3(updates, errors)


def items_per_warehouse(items: Sequence[Any]) -> dict[str, int]:
    """How many items of a body name each partnerWarehouseId (JSON keys: the id as text)."""
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        warehouse = item.get("partnerWarehouseId") if type(item) is dict else None
        if type(warehouse) is int:
            counts[str(warehouse)] += 1
    return dict(counts)


# --- settings and store -----------------------------------------------------------------------


@dataclass(frozen=True)
class V3Settings:
    """The v3 method's limits per business; `window_seconds` is the Market's minute."""

    requests_per_minute: int | None = REQUESTS_PER_MINUTE
    window_seconds: float = 60.0
    max_parallel_requests: int = PARALLEL_REQUESTS_MAX
    # business id -> the status every update of that business gets (401, 403, 404 …), as v2's
    # forced_status does per campaign.
    forced_status: Mapping[int, int] = field(default_factory=dict)

    def updated(self, changes: Mapping[str, Any]) -> V3Settings:
        """A copy with `changes` applied; ConfigError names a bad one."""
        values: dict[str, Any] = {}
        for name, raw in changes.items():
            if name == "requests_per_minute":
                if raw is not None and (type(raw) is not int or raw < 1):
                    raise ConfigError(f"v3 setting {name!r}: null or an integer ≥ 1, got {raw!r}")
            elif name == "window_seconds":
                if type(raw) not in (int, float) or raw <= 0:
                    raise ConfigError(f"v3 setting {name!r}: a number > 0, got {raw!r}")
                values[name] = float(raw)
                continue
            elif name == "max_parallel_requests":
                if type(raw) is not int or raw < 1:
                    raise ConfigError(f"v3 setting {name!r}: an integer ≥ 1, got {raw!r}")
            elif name == "forced_status":
                try:
                    values[name] = forced_statuses(raw)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"v3 setting {name!r}: {exc}") from None
                continue
            else:
                raise ConfigError(
                    f"unknown v3 setting {name!r}; known: ['forced_status', "
                    "'max_parallel_requests', 'requests_per_minute', 'window_seconds']"
                )
            values[name] = raw
        return replace(self, **values)

    def as_json(self) -> dict[str, Any]:
        """The settings as JSON."""
        return {
            "requests_per_minute": self.requests_per_minute,
            "window_seconds": self.window_seconds,
            "max_parallel_requests": self.max_parallel_requests,
            "forced_status": {str(k): v for k, v in sorted(self.forced_status.items())},
        }


def _business_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "requests_by_status": defaultdict(int),
        "items_accepted": 0,
        "items_refused": 0,
        "stale_overwrites": 0,
        "max_parallel_seen": 0,
        "max_requests_in_window": 0,
        "rate_limited": 0,
        "parallel_limited": 0,
    }


class V3Store(GatedStore):
    """v3 stock, rate windows, in-flight counts, request log and counters; thread-safe."""

    _key_field = "business"

    def __init__(self, request_log_max: int = 10_000) -> None:
        self._lock = threading.Lock()
        self.settings = V3Settings()
        self._gate = ParallelGate()
        self._seq = 0
        self._log_max = request_log_max
        self._clear()

    def _clear(self) -> None:
        self._stock: dict[int, dict[int, dict[str, tuple[int, datetime, datetime]]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._rate: dict[int, RollingWindow] = defaultdict(RollingWindow)
        self._log: deque[dict[str, Any]] = deque(maxlen=self._log_max)
        self._stats: dict[int, dict[str, Any]] = defaultdict(_business_stats)

    def configure(self, changes: Mapping[str, Any]) -> V3Settings:
        """Applies a partial update of the settings."""
        with self._lock:
            self.settings = self.settings.updated(changes)
            return self.settings

    def reset(self) -> None:
        """Forgets stock, windows, log and counters; settings and in-flight counts stay."""
        with self._lock:
            self._clear()

    # --- reads (for inspection and the v3 read method) ------------------------------------------

    def get(self, business: int, warehouse: int, sku: str) -> tuple[int, datetime] | None:
        """(count, updatedAt) held for one SKU (compared after trimming), or None."""
        with self._lock:
            held = self._stock.get(business, {}).get(warehouse, {}).get(normalize_sku(sku))
        return None if held is None else (held[0], held[1])

    def warehouse(self, business: int, warehouse: int) -> dict[str, tuple[int, datetime]]:
        """Every SKU held for one warehouse: {sku: (count, updatedAt)}."""
        with self._lock:
            skus = self._stock.get(business, {}).get(warehouse, {})
            return {sku: (v[0], v[1]) for sku, v in skus.items()}

    def read(self, business: int, warehouse: int, skus: Iterable[str]) -> list[Offer]:
        """The held SKUs among `skus` as (sku, count, updatedAt), in the order asked."""
        with self._lock:
            stock = self._stock.get(business, {}).get(warehouse, {})
            found = ((sku, stock.get(sku)) for sku in skus)
            return [(sku, v[0], v[1]) for sku, v in found if v is not None]

    def page(
        self, business: int, warehouse: int, after: str | None, limit: int
    ) -> tuple[list[Offer], bool]:
        """Up to `limit` SKUs in order after `after`, and whether more follow."""
        with self._lock:
            stock = self._stock.get(business, {}).get(warehouse, {})
            keys = sorted(stock)  # a sandbox's warehouse is small enough to sort per page
            start = 0 if after is None else bisect.bisect_right(keys, after)
            page = keys[start : start + limit]
            return [(s, stock[s][0], stock[s][1]) for s in page], start + limit < len(keys)

    def write(self, business: int, warehouse: int, entries: Iterable[Offer]) -> int:
        """Stores (sku, count, updatedAt) entries as the Market's own (drift), last write wins."""
        now_utc = datetime.now(UTC)
        with self._lock:
            stock = self._stock[business][warehouse]
            written = 0
            for sku, count, updated_at in entries:
                stock[sku] = (count, updated_at, now_utc)
                written += 1
        return written

    def drop(self, business: int, warehouse: int, skus: Iterable[str]) -> int:
        """Forgets SKUs of a warehouse; returns how many it held."""
        with self._lock:
            stock = self._stock.get(business, {}).get(warehouse, {})
            return sum(stock.pop(sku, None) is not None for sku in skus)

    def snapshot(self, business: int | None = None) -> dict[str, Any]:
        """{business: {warehouse: {sku: {count, updatedAt, accepted_at}}}}, of one if given."""
        with self._lock:
            chosen = sorted(self._stock) if business is None else [business]
            return {
                str(b): _warehouses_json(self._stock, b)
                for b in chosen
                if any(self._stock.get(b, {}).values())
            }

    def state_json(self, business: int | None, warehouse: int | None) -> dict[str, Any]:
        """The JSON of `GET /_sandbox/v3/state` (see the module docstring)."""
        with self._lock:
            if business is not None and warehouse is not None:
                skus = self._stock.get(business, {}).get(warehouse, {})
                return {
                    "business": business,
                    "warehouse": warehouse,
                    "skus": {s: stock_json(v) for s, v in skus.items()},
                }
            if business is not None:
                return {"business": business, "warehouses": _warehouses_json(self._stock, business)}
            return {
                "businesses": {
                    str(b): _warehouses_json(self._stock, b) for b in sorted(self._stock)
                }
            }

    def stats(self) -> dict[str, Any]:
        """Exact counters per business since the last reset, and requests in flight."""
        with self._lock:
            return {
                "businesses": {str(b): plain(s) for b, s in sorted(self._stats.items())},
                "in_flight": self._gate.busy(),
            }

    # --- the request's bookkeeping ---------------------------------------------------------------

    def _slots(self, key: int) -> tuple[int, dict[str, Any]]:
        return self.settings.max_parallel_requests, self._stats[key]

    def reserve(self, business: int) -> tuple[bool, float]:
        """Counts one request in the business's window if it fits; else (False, when it would)."""
        with self._lock:
            limit, window = self.settings.requests_per_minute, self.settings.window_seconds
            rate = self._rate[business]
            reservation = reserve_in(rate, 1, limit, window)
            if reservation.ok:
                stats = self._stats[business]
                stats["max_requests_in_window"] = max(stats["max_requests_in_window"], rate.total)
            return reservation.ok, reservation.until

    def rate_headers(self, business: int | None, until: float | None = None) -> dict[str, str]:
        """X-RateLimit-Resource-* of the business's request window; `until` overrides -Until."""
        with self._lock:
            limit, window = self.settings.requests_per_minute, self.settings.window_seconds
            rate = self._rate.get(business) if business is not None else None
            return window_headers(rate, limit, window, until)

    def apply(self, business: int, updates: Sequence[WarehouseUpdate]) -> int:
        """Stores updates (last write wins); returns how many."""
        if not updates:
            return 0
        now_utc = datetime.now(UTC)
        stale = 0
        with self._lock:
            stock = self._stock[business]
            for u in updates:
                updated_at = u.updated_at or now_utc
                held = stock[u.warehouse].get(u.sku)
                if held is not None and updated_at < held[1]:
                    stale += 1
                stock[u.warehouse][u.sku] = (u.count, updated_at, now_utc)
            self._stats[business]["items_accepted"] += len(updates)
            self._stats[business]["stale_overwrites"] += stale
        return len(updates)

    def record(self, entry: dict[str, Any]) -> None:
        """Logs one request (bounded log) and counts it (exact counters)."""
        with self._lock:
            status = self._logged(entry)
            if entry["business"] is not None:
                stats = self._stats[entry["business"]]
                stats["requests"] += 1
                stats["requests_by_status"][status] += 1
                stats["items_refused"] += entry["items_refused"]
                stats["rate_limited"] += entry["rate_limited"]
                stats["parallel_limited"] += entry["parallel_limited"]


def _warehouses_json(
    stock: Mapping[int, Mapping[int, Mapping[str, tuple[int, datetime, datetime]]]], business: int
) -> dict[str, Any]:
    return {
        str(w): {s: stock_json(v) for s, v in skus.items()}
        for w, skus in sorted(stock.get(business, {}).items())
    }


# --- HTTP ---------------------------------------------------------------------------------------


def dispatch(handler: SandboxHandler, method: str, url: SplitResult) -> bool:
    """Answers the v3 update method and `/_sandbox/v3/*`; False when the path is not theirs."""
    if url.path.startswith("/_sandbox/v3/"):
        _control(handler, method, url.path, parse_qs(url.query))
        return True
    match = _UPDATE_PATH.match(url.path)
    if match is None:
        return False
    if method != "POST":
        from sandbox.handler import _errors

        handler._read_body()
        error = ApiError("METHOD_NOT_ALLOWED", f"{method} is not allowed here; use POST")
        handler._send(405, _errors(error), {"Allow": "POST", **handler.state.v3.rate_headers(None)})
        return True
    _update(handler, match.group(1))
    return True


def _update(handler: SandboxHandler, raw_business: str) -> None:
    """Answers (or drops) one v3 update request and records it."""
    from sandbox.handler import new_entry

    store = handler.state.v3
    keys = {"business": parse_campaign_id(raw_business)}
    counters: dict[str, Any] = {"items": 0, "items_accepted": 0, "items_refused": 0}
    entry = new_entry("POST", handler.path, keys, **counters, warehouses={})
    handler._run_logged(
        entry,
        lambda: _checks(handler, raw_business, entry),
        store.record,
        lambda until: store.rate_headers(entry["business"], until),
    )


def _checks(handler: SandboxHandler, raw_business: str, entry: dict[str, Any]) -> None:
    """Runs the request; returns for 200, raises _Answer for another status, or _Drop."""
    from sandbox.handler import _Answer, _forced, parallel_refusal

    state, store = handler.state, handler.state.v3
    raw = handler._checked_body(entry)
    business: int | None = entry["business"]
    if business is None:
        raise _Answer(400, "BAD_REQUEST", f"businessId must be an integer ≥ 1: {raw_business!r}")
    forced = store.settings.forced_status.get(business)
    if forced is not None:
        entry["injected"] = "forced"
        raise _forced(forced, business, state.config.injected_420_wait_seconds)
    admitted = store.begin(business)
    try:
        if not admitted:
            slots, wait = (
                store.settings.max_parallel_requests,
                state.config.injected_420_wait_seconds,
            )
            raise parallel_refusal(entry, slots, f"businessId {business}", wait)
        _admitted(handler, business, raw, entry)
    finally:
        store.end(business, admitted)


def _admitted(handler: SandboxHandler, business: int, raw: bytes, entry: dict[str, Any]) -> None:
    """The part of a request inside a parallel slot: faults, body, window, items, store."""
    from sandbox.handler import _Answer, _Drop, raise_injected, window_refusal

    state, store = handler.state, handler.state.v3
    faults = state.roll_faults()  # the v2 fault settings and generator, shared
    if faults.latency_seconds:
        time.sleep(faults.latency_seconds)
    config = state.config
    wait = config.injected_420_wait_seconds
    raise_injected(faults, entry, lambda status: injected_answer(status == 500, business, wait))
    handler._require_json()
    try:
        items = decode_v3_body(raw)
    except RequestRejected as rejected:
        raise _Answer.of(400, [rejected.error]) from None
    entry["items"] = len(items)
    entry["warehouses"] = items_per_warehouse(items)
    ok, until = store.reserve(business)
    if not ok:
        limit, window = store.settings.requests_per_minute, store.settings.window_seconds
        scope = f"businessId {business}"
        raise window_refusal(entry, limit, window, "resp", scope=scope, until=until)
    entry["items_refused"] = len(items)  # until some are applied
    known = state.accounts.accounts.warehouse_ids(business)
    validated = validate_v3_items(items, datetime.now(UTC), business, known)
    updates, errors = settle(
        validated.updates, validated.errors, config.refuse_skus, config.partial_400
    )
    entry["items_accepted"] = store.apply(business, updates)
    entry["items_refused"] = len(items) - entry["items_accepted"]
    if faults.drop_after:
        entry["injected"] = "drop_after"
        raise _Drop
    if errors:
        raise _Answer.of(400, errors)


def injected_answer(error_500: bool, business: int, wait_420: float) -> Exception:
    """The _Answer of an injected 500 or 420 for a business-scoped method."""
    from sandbox.handler import _Answer

    if error_500:
        message = f"Internal error 500 for businessId {business} (injected by the sandbox)"
        return _Answer(500, "INTERNAL_ERROR", message)
    message = f"Hit rate limit for businessId {business} (injected by the sandbox)"
    return _Answer(420, "LIMIT_EXCEEDED", message, time.monotonic() + wait_420)


def _control(handler: SandboxHandler, method: str, path: str, query: dict[str, list[str]]) -> None:
    """`GET /_sandbox/v3/{state,requests,stats,config}`, `POST /_sandbox/v3/config`."""
    from sandbox.handler import _query_int, control_changes, since_limit

    store = handler.state.v3
    raw = handler._read_body() or b""
    try:
        business = _query_int(query, "business")
        if (method, path) == ("GET", "/_sandbox/v3/state"):
            warehouse = _query_int(query, "warehouse")
            if warehouse is not None and business is None:
                raise ValueError("query parameter 'warehouse' needs 'business'")
            handler._send(200, store.state_json(business, warehouse))
        elif (method, path) == ("GET", "/_sandbox/v3/requests"):
            handler._send(200, {"requests": store.requests(business, *since_limit(query))})
        elif (method, path) == ("GET", "/_sandbox/v3/stats"):
            handler._send(200, store.stats())
        elif (method, path) == ("GET", "/_sandbox/v3/config"):
            handler._send(200, store.settings.as_json())
        elif (method, path) == ("POST", "/_sandbox/v3/config"):
            changes = control_changes(raw, "v3 settings")
            handler._send(200, store.configure(changes).as_json())
        else:
            handler._no_endpoint(method, path)
    except (ConfigError, ValueError) as exc:
        handler._bad_control(exc)
