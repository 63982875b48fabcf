"""The Market's read methods in the sandbox (v2 getStocks, v3 stocks), their limits and controls.

Methods (answers follow the Market's OpenAPI: GetWarehouseStocksResponse and
GetStocksOnPartnerWarehousesResponse):

- `POST /v2/campaigns/{campaignId}/offers/stocks`, body `{"offerIds": [1 … 500 SKUs]}` (answered
  whole) or no `offerIds` and paged by the query's `page_token` (alias `pageToken`) and `limit`
  (1 … 100, default 100). Answer `result.paging.nextPageToken` (only when more follow) and
  `result.warehouses[{warehouseId, offers[{offerId, updatedAt, stocks[{type, count}]}]}]`; FIT and
  AVAILABLE carry the count last written. For `returns_warehouse_campaigns` the Market's returns
  warehouse comes first with other counts (count + 1), which a client must ignore. Offers the
  sandbox does not hold are absent; an answer with none has `warehouses: []`. Limit: offers
  returned (distinct offerIds) per campaign per window, its own window, not the PUT's.
- `POST /v3/businesses/{businessId}/offers/stocks`, body `{"partnerWarehouseId": N, "offerIds":
  [...]}` (`partnerWarehouseId` required; paging as v2). Answer `result.partnerWarehouseId`,
  `result.offers[...]`, `result.paging`. Limit: requests per business per window.
Both count in the parallel limit (v2 per campaign with the PUTs, v3 per business) and get the
same fault injection and X-RateLimit-Resource-* headers as the PUT.

The v3 store, for the v3 update method to write into: `SandboxState.v3_stock` is a `V3Stock`
(reach it through the state each time: a reset replaces it), keyed (business, partnerWarehouseId)
then SKU, each value `(count, updatedAt)`:
    write(business, warehouse, [(sku, count, updated_at), ...]) -> int   # last write wins
    drop(business, warehouse, skus) -> int
    get(business, warehouse, skus) -> [(sku, count, updated_at)]          # held ones, as asked
    page(business, warehouse, after, limit) -> ([(sku, count, updated_at)], more_follow)
    snapshot(business=None) -> JSON
A v3 update should also take `state.begin_business`/`end_business` (the per-business parallel
counter the v3 read uses).

Control (`/_sandbox/...`; a target is `"campaign": N` or `"business": B, "partnerWarehouseId": W`):
    POST drift         {target, "skus": {sku: count}, "updatedAt"?: iso}  -> {"written": n}
    POST drop          {target, "skus": [sku, ...]}                       -> {"dropped": n}
    POST lost-updates  {"campaign": N, "count"?: K, "rate"?: 0…1}  next K applicable PUTs (then
                       that fraction) answer as usual but apply nothing; both 0 turns it off
    GET  lost-updates, reads (counters), read-requests?campaign=|business=&since=&limit=,
         warehouses?campaign=N, v3-stock?business=B
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from domain.market_rules import BODY_BYTES_MAX, COUNT_MAX, SKU_PATTERN, normalize_sku
from sandbox.config import SandboxConfig
from sandbox.rules import ApiError, RequestRejected, parse_campaign_id

if TYPE_CHECKING:
    from sandbox.handler import SandboxHandler

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


def _reject(code: str, message: str) -> RequestRejected:
    return RequestRejected(ApiError(code, message))


# --- pure rules ---------------------------------------------------------------------------------


def read_limit(config: SandboxConfig, method: str) -> int | None:
    """The limit of a read window: "v2" offers per campaign, "v3" requests per business."""
    return config.read_offers_per_minute if method == "v2" else config.v3_read_requests_per_minute


def seller_warehouse_id(config: SandboxConfig, campaign: int) -> int:
    """The campaign's own warehouse in read answers: configured, else campaign id * 10."""
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
        raise _reject(
            "BAD_REQUEST", f"Query parameter 'page_token' is not a valid token: {token!r}"
        )
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
        raise _reject("BAD_REQUEST", f"Field '{name}' must be an integer ≥ 1, got {value!r}")
    return value


def _offer_ids(raw: object) -> list[str] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _reject("BAD_REQUEST", "Field 'offerIds' must be an array")
    if not 1 <= len(raw) <= READ_OFFER_IDS_MAX:
        raise _reject(
            "BAD_REQUEST",
            f"Field 'offerIds' must contain 1 … {READ_OFFER_IDS_MAX} items, got {len(raw)}",
        )
    skus: list[str] = []
    for index, item in enumerate(raw):
        sku = normalize_sku(item) if isinstance(item, str) else None
        if sku is None or SKU_PATTERN.fullmatch(sku) is None:
            raise _reject("INVALID_SHOP_SKU", f"offerIds[{index}] is not a valid SKU: {item!r}")
        skus.append(sku)
    if len(set(skus)) != len(skus):
        duplicate = next(s for s in skus if skus.count(s) > 1)
        raise _reject("BAD_REQUEST", f"Field 'offerIds' must be unique: '{duplicate}' repeats")
    return skus


def parse_read(raw: bytes, query: Mapping[str, list[str]], *, v3: bool) -> ReadQuery:
    """The read a body and query ask for; RequestRejected names the field and the rule broken."""
    if len(raw) > BODY_BYTES_MAX:
        raise _reject("BAD_REQUEST", f"Request body of {len(raw)} bytes exceeds {BODY_BYTES_MAX}")
    body: Any = {}
    if raw.strip():
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _reject("BAD_REQUEST", f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _reject("BAD_REQUEST", "Request body must be a JSON object")
    unknown = body.keys() - (_V3_FIELDS if v3 else _V2_FIELDS)
    if unknown:
        raise _reject("UNKNOWN_PARAMETER", f"Unknown field '{sorted(unknown)[0]}' in request")
    for name in ("hasStocks", "withTurnover", "archived"):
        if body.get(name) is not None and type(body[name]) is not bool:
            raise _reject("BAD_REQUEST", f"Field '{name}' must be true or false")
    if v3 and body.get("partnerWarehouseId") is None:
        raise _reject("MISSING_PARAM", "Field 'partnerWarehouseId' is required")
    warehouse = _positive_id(body, "partnerWarehouseId" if v3 else "stocksWarehouseId")
    offer_ids = _offer_ids(body.get("offerIds"))
    tokens, limits = query.get("page_token") or query.get("pageToken"), query.get("limit")
    token, raw_limit = tokens[0] if tokens else None, limits[0] if limits else None
    if offer_ids is not None and (token is not None or raw_limit is not None):
        raise _reject(
            "BAD_REQUEST",
            "Field 'offerIds' cannot be combined with page_token or limit: "
            "the list is answered whole",
        )
    limit = READ_PAGE_LIMIT_DEFAULT
    if raw_limit is not None:
        limit = int(raw_limit) if raw_limit.isdigit() else 0
        if not 1 <= limit <= READ_PAGE_LIMIT_MAX:
            raise _reject(
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
    config: SandboxConfig, campaign: int, offers: Sequence[Offer], more: bool, only: int | None
) -> dict[str, Any]:
    """GetWarehouseStocksDTO: the returns warehouse (when configured) first, then the seller's."""
    places: list[tuple[int, int]] = []
    if campaign in config.returns_warehouse_campaigns:
        places.append((config.returns_warehouse_id, RETURNS_COUNT_SHIFT))
    places.append((seller_warehouse_id(config, campaign), 0))
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


def _control_int(body: Mapping[str, Any], name: str) -> int:
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
        return StockTarget(_control_int(body, "campaign"))
    if "business" in body:
        return StockTarget(
            None, _control_int(body, "business"), _control_int(body, "partnerWarehouseId")
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


# --- the v3 store and the read ledger -----------------------------------------------------------


class V3Stock:
    """v3 stock: (business, partnerWarehouseId) -> SKU -> (count, updatedAt); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.data: dict[tuple[int, int], dict[str, tuple[int, datetime]]] = defaultdict(dict)
        self._sorted: dict[tuple[int, int], list[str]] = {}

    def write(self, business: int, warehouse: int, entries: Iterable[Offer]) -> int:
        """Stores (sku, count, updatedAt) entries, last write wins; returns how many."""
        key, written = (business, warehouse), 0
        with self._lock:
            stock = self.data[key]
            for sku, count, updated_at in entries:
                if sku not in stock:
                    self._sorted.pop(key, None)
                stock[sku] = (count, updated_at)
                written += 1
        return written

    def drop(self, business: int, warehouse: int, skus: Iterable[str]) -> int:
        """Forgets SKUs of a warehouse; returns how many it held."""
        key = (business, warehouse)
        with self._lock:
            stock = self.data.get(key, {})
            dropped = sum(stock.pop(sku, None) is not None for sku in skus)
            if dropped:
                self._sorted.pop(key, None)
        return dropped

    def get(self, business: int, warehouse: int, skus: Iterable[str]) -> list[Offer]:
        """The held SKUs among `skus`, in the order asked."""
        with self._lock:
            stock = self.data.get((business, warehouse), {})
            found = ((sku, stock.get(sku)) for sku in skus)
            return [(sku, v[0], v[1]) for sku, v in found if v is not None]

    def page(
        self, business: int, warehouse: int, after: str | None, limit: int
    ) -> tuple[list[Offer], bool]:
        """Up to `limit` SKUs in order after `after`, and whether more follow."""
        import bisect

        key = (business, warehouse)
        with self._lock:
            stock = self.data.get(key, {})
            keys = self._sorted.get(key)
            if keys is None:
                keys = self._sorted[key] = sorted(stock)
            start = 0 if after is None else bisect.bisect_right(keys, after)
            page = keys[start : start + limit]
            return [(s, stock[s][0], stock[s][1]) for s in page], start + limit < len(keys)

    def snapshot(self, business: int | None = None) -> dict[str, Any]:
        """{business: {warehouse: {sku: {count, updatedAt}}}} (of one business if given)."""
        with self._lock:
            result: dict[str, Any] = {}
            for (b, w), skus in sorted(self.data.items()):
                if business is None or b == business:
                    result.setdefault(str(b), {})[str(w)] = {
                        sku: {"count": c, "updatedAt": at.isoformat()}
                        for sku, (c, at) in skus.items()
                    }
            return result


def _read_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "requests_by_status": defaultdict(int),
        "offers_asked": 0,
        "offers_returned": 0,
        "parallel_limited": 0,
        "rate_limited": 0,
        "max_in_window": 0,  # offers returned (v2) or requests (v3) in one window at most
    }


class ReadBook:
    """Counters and a bounded log of the read requests, per campaign (v2) and business (v3)."""

    def __init__(self, log_max: int) -> None:
        self._lock = threading.Lock()
        self._log: deque[dict[str, Any]] = deque(maxlen=log_max)
        self._totals = _read_stats()
        self._totals["injected"] = defaultdict(int)
        self._by: dict[str, dict[int, dict[str, Any]]] = {
            "v2": defaultdict(_read_stats),
            "v3": defaultdict(_read_stats),
        }

    def resize(self, log_max: int) -> None:
        """Keeps the newest `log_max` entries from now on."""
        with self._lock:
            self._log = deque(self._log, maxlen=log_max)

    def peak(self, method: str, key: int, in_window: int) -> None:
        """Notes how full a read window was after a request was counted in it."""
        with self._lock:
            stats = self._by[method][key]
            stats["max_in_window"] = max(stats["max_in_window"], in_window)

    def record(self, entry: dict[str, Any]) -> None:
        """Logs one read request and counts it."""
        status = "dropped" if entry["status"] is None else str(entry["status"])
        method, key = ("v3", entry["business"]) if entry["business"] else ("v2", entry["campaign"])
        with self._lock:
            self._log.append(entry)
            if entry["injected"]:
                self._totals["injected"][entry["injected"]] += 1
            targets = [self._totals] + ([self._by[method][key]] if key is not None else [])
            for stats in targets:
                stats["requests"] += 1
                stats["requests_by_status"][status] += 1
                for name in ("offers_asked", "offers_returned", "parallel_limited", "rate_limited"):
                    stats[name] += entry[name]

    def requests(
        self, campaign: int | None, business: int | None, since: int, limit: int | None
    ) -> list[dict[str, Any]]:
        """Logged reads (oldest first) with seq > since, of one campaign or business if given."""
        with self._lock:
            entries = [
                dict(e)
                for e in self._log
                if e["seq"] > since
                and (campaign is None or e["campaign"] == campaign)
                and (business is None or e["business"] == business)
            ]
        return entries if limit is None else entries[-limit:]

    def stats(self) -> dict[str, Any]:
        """The counters as JSON: totals, `campaigns` (v2 reads) and `businesses` (v3 reads)."""
        with self._lock:
            totals = {k: dict(v) if isinstance(v, dict) else v for k, v in self._totals.items()}
            del totals["max_in_window"]  # a window is per campaign or business, not overall
            per = {
                name: {
                    str(k): {n: dict(x) if isinstance(x, dict) else x for n, x in v.items()}
                    for k, v in sorted(self._by[method].items())
                }
                for name, method in (("campaigns", "v2"), ("businesses", "v3"))
            }
        return {**totals, **per}


# --- HTTP ---------------------------------------------------------------------------------------


def _entry(method: str, path: str, campaign: int | None, business: int | None) -> dict[str, Any]:
    return {
        "method": method,
        "path": path,
        "campaign": campaign,
        "business": business,
        "partner_warehouse_id": None,
        "status": None,
        "outcome": "error",
        "paged": False,
        "offers_asked": 0,
        "offers_returned": 0,
        "bytes": 0,
        "parallel_limited": False,
        "rate_limited": False,
        "injected": None,
        "first_error": None,
        "started_monotonic": time.monotonic(),
        "started_at": datetime.now(UTC).isoformat(),
    }


def _serve(
    h: SandboxHandler,
    entry: dict[str, Any],
    run: Callable[[], dict[str, Any]],
    headers: Callable[[float | None], dict[str, str]],
) -> None:
    """Runs a read, logs it, and writes its answer (or drops the connection)."""
    from sandbox.handler import _Answer, _Drop, _errors

    status, until = 200, None
    try:
        body = {"status": "OK", "result": run()}
    except _Answer as answer:
        status, until = answer.status, answer.until
        body = _errors(*answer.errors)
        entry["first_error"] = answer.errors[0].message
    except _Drop:
        entry["outcome"] = entry["injected"]
        _finish(h, entry)
        h._drop()
        return
    entry["status"] = status
    entry["outcome"] = "ok" if status == 200 else "error"
    _finish(h, entry)
    h._send(status, body, headers(until))


def _finish(h: SandboxHandler, entry: dict[str, Any]) -> None:
    entry["ended_monotonic"] = time.monotonic()
    entry["ended_at"] = datetime.now(UTC).isoformat()
    h.state.record_read(entry)


def _body(h: SandboxHandler, entry: dict[str, Any]) -> bytes:
    """The request body after the credentials are checked; 400 when it cannot be read."""
    from sandbox.handler import _READ_CAP, _Answer

    raw = h._read_body()
    if raw is None:
        raise _Answer(400, "BAD_REQUEST", f"Content-Length missing, invalid or over {_READ_CAP}")
    entry["bytes"] = len(raw)
    h._check_auth()
    return raw


def _faults_and_type(h: SandboxHandler, key: int, raw: bytes, entry: dict[str, Any]) -> bool:
    """Injected latency and faults as for the PUT, then the JSON content type; True: drop after."""
    from sandbox.handler import _Answer, _Drop, _forced

    state = h.state
    faults = state.roll_faults()
    if faults.latency_seconds:
        time.sleep(faults.latency_seconds)
    if faults.drop_before:
        entry["injected"] = "drop_before"
        raise _Drop
    if faults.error_500 or faults.error_420:
        entry["injected"] = "500" if faults.error_500 else "420"
        status = 500 if faults.error_500 else 420
        raise _forced(status, key, state.config.injected_420_wait_seconds)
    content_type = h.headers.get("Content-Type", "")
    if raw.strip() and content_type.partition(";")[0].strip().lower() != "application/json":
        message = f"Content-Type must be application/json, got {content_type!r}"
        raise _Answer(400, "UNSUPPORTED_MEDIA_TYPE", message)
    return faults.drop_after


def _parse(
    raw: bytes, query: Mapping[str, list[str]], v3: bool, entry: dict[str, Any]
) -> ReadQuery:
    from sandbox.handler import _Answer

    try:
        read = parse_read(raw, query, v3=v3)
    except RequestRejected as rejected:
        raise _Answer.of(400, [rejected.error]) from None
    entry["paged"] = read.offer_ids is None
    entry["offers_asked"] = read.limit if read.offer_ids is None else len(read.offer_ids)
    entry["partner_warehouse_id"] = read.warehouse if v3 else None
    return read


def _period(seconds: float) -> str:
    return "1 minute" if seconds == 60 else f"{seconds:g} seconds"


def serve_v2_read(h: SandboxHandler, raw_campaign: str, query: Mapping[str, list[str]]) -> None:
    """`POST /v2/campaigns/{campaignId}/offers/stocks` (getStocks)."""
    from sandbox.handler import _Answer, _Drop, _forced

    state = h.state
    campaign = parse_campaign_id(raw_campaign)
    entry = _entry("getStocks", h.path, campaign, None)

    def run() -> dict[str, Any]:
        raw = _body(h, entry)
        config = state.config
        if campaign is None:
            raise _Answer(
                400, "BAD_REQUEST", f"campaignId must be an integer ≥ 1: {raw_campaign!r}"
            )
        if config.known_campaigns is not None and campaign not in config.known_campaigns:
            raise _Answer(404, "NOT_FOUND", f"Campaign {campaign} not found")
        forced = config.forced_status.get(campaign)
        if forced is not None:
            entry["injected"] = "forced"
            raise _forced(forced, campaign, config.injected_420_wait_seconds)
        admitted = state.begin(campaign)  # the same slots as the PUTs of this campaign
        try:
            if not admitted:
                entry["parallel_limited"] = True
                message = (
                    f"Hit rate limit of {config.max_parallel_requests} parallel requests "
                    f"for campaignId {campaign}"
                )
                until = time.monotonic() + config.injected_420_wait_seconds
                raise _Answer(420, "LIMIT_EXCEEDED", message, until)
            drop_after = _faults_and_type(h, campaign, raw, entry)
            read = _parse(raw, query, False, entry)
            if read.offer_ids is not None:
                offers, more = state.read_offers(campaign, read.offer_ids), False
            else:
                offers, more = state.read_page(campaign, read.after, read.limit)
            reservation = state.reserve_read("v2", campaign, len(offers))
            config = state.config
            if not reservation.ok:
                entry["rate_limited"] = True
                message = (
                    f"Hit rate limit of '{config.read_offers_per_minute}' requests per "
                    f"'{_period(config.rate_window_seconds)}' for resource "
                    f"'resp.result.warehouses.offers.offerId' of campaignId {campaign}: "
                    f"{len(offers)} offers to return"
                )
                raise _Answer(420, "LIMIT_EXCEEDED", message, reservation.until)
            entry["offers_returned"] = len(offers)
            result = v2_result(config, campaign, offers, more, read.warehouse)
            if drop_after:
                entry["injected"] = "drop_after"
                raise _Drop
            return result
        finally:
            state.end(campaign, admitted)

    _serve(h, entry, run, lambda until: state.read_headers("v2", campaign, until))


def serve_v3_read(h: SandboxHandler, raw_business: str, query: Mapping[str, list[str]]) -> None:
    """`POST /v3/businesses/{businessId}/offers/stocks` (getStocksOnPartnerWarehouses)."""
    from sandbox.handler import _Answer, _Drop

    state = h.state
    business = parse_campaign_id(raw_business)
    entry = _entry("getStocksOnPartnerWarehouses", h.path, None, business)

    def run() -> dict[str, Any]:
        raw = _body(h, entry)
        if business is None:
            raise _Answer(
                400, "BAD_REQUEST", f"businessId must be an integer ≥ 1: {raw_business!r}"
            )
        admitted = state.begin_business(business)
        try:
            config = state.config
            if not admitted:
                entry["parallel_limited"] = True
                message = (
                    f"Hit rate limit of {config.max_parallel_requests} parallel requests "
                    f"for businessId {business}"
                )
                until = time.monotonic() + config.injected_420_wait_seconds
                raise _Answer(420, "LIMIT_EXCEEDED", message, until)
            drop_after = _faults_and_type(h, business, raw, entry)
            reservation = state.reserve_read("v3", business, 1)  # a 400 counts, as on the PUT
            if not reservation.ok:
                entry["rate_limited"] = True
                message = (
                    f"Hit rate limit of '{config.v3_read_requests_per_minute}' requests per "
                    f"'{_period(config.rate_window_seconds)}' for resource 'resp' "
                    f"of businessId {business}"
                )
                raise _Answer(420, "LIMIT_EXCEEDED", message, reservation.until)
            read = _parse(raw, query, True, entry)
            warehouse = read.warehouse or 0  # parse_read requires it for v3
            stock = state.v3_stock
            if read.offer_ids is not None:
                offers, more = stock.get(business, warehouse, read.offer_ids), False
            else:
                offers, more = stock.page(business, warehouse, read.after, read.limit)
            entry["offers_returned"] = len(offers)
            result = {
                "partnerWarehouseId": warehouse,
                "offers": [offer_json(o) for o in offers],
                "paging": paging_json(offers, more),
            }
            if drop_after:
                entry["injected"] = "drop_after"
                raise _Drop
            return result
        finally:
            state.end_business(business, admitted)

    _serve(h, entry, run, lambda until: state.read_headers("v3", business, until))


CONTROLS = frozenset(
    {
        ("GET", "/_sandbox/reads"),
        ("GET", "/_sandbox/read-requests"),
        ("GET", "/_sandbox/lost-updates"),
        ("GET", "/_sandbox/v3-stock"),
        ("GET", "/_sandbox/warehouses"),
        ("POST", "/_sandbox/drift"),
        ("POST", "/_sandbox/drop"),
        ("POST", "/_sandbox/lost-updates"),
    }
)


def _query_int(query: Mapping[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        raise ValueError(f"query parameter {name!r} must be an integer") from None


def control(
    h: SandboxHandler, method: str, path: str, query: Mapping[str, list[str]], raw: bytes | None
) -> None:
    """One of the CONTROLS endpoints; a bad field or value gets a 400 naming it."""
    from sandbox.handler import _errors

    try:
        _control(h, method, path, query, raw)
    except ValueError as exc:  # json.JSONDecodeError is one too
        h._send(400, _errors(ApiError("BAD_REQUEST", str(exc))))


def _control(
    h: SandboxHandler, method: str, path: str, query: Mapping[str, list[str]], raw: bytes | None
) -> None:
    state = h.state
    campaign, business = _query_int(query, "campaign"), _query_int(query, "business")
    if (method, path) == ("GET", "/_sandbox/reads"):
        h._send(200, state.reads.stats())
    elif (method, path) == ("GET", "/_sandbox/read-requests"):
        since, limit = _query_int(query, "since") or 0, _query_int(query, "limit")
        h._send(200, {"requests": state.reads.requests(campaign, business, since, limit)})
    elif (method, path) == ("GET", "/_sandbox/lost-updates"):
        h._send(200, {"campaigns": state.lost_updates()})
    elif (method, path) == ("GET", "/_sandbox/v3-stock"):
        h._send(200, {"businesses": state.v3_stock.snapshot(business)})
    elif (method, path) == ("GET", "/_sandbox/warehouses"):
        config = state.config
        if campaign is None:
            raise ValueError("query parameter 'campaign' is required")
        returns = campaign in config.returns_warehouse_campaigns
        h._send(
            200,
            {
                "campaign": campaign,
                "warehouseId": seller_warehouse_id(config, campaign),
                "returnsWarehouseId": config.returns_warehouse_id if returns else None,
            },
        )
    else:
        body = json.loads(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError("a JSON object expected")
        h._send(200, {"status": "OK", **_change(h, path, body)})


def _change(h: SandboxHandler, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Applies one POST control: drift, drop or lost-updates; returns what it did."""
    state = h.state
    if path == "/_sandbox/lost-updates":
        unknown = body.keys() - {"campaign", "count", "rate"}
        if unknown:
            raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
        campaign = _control_int(body, "campaign")
        count, rate = body.get("count", 0), body.get("rate", 0)
        if type(count) is not int or count < 0:
            raise ValueError(f"field 'count' must be an integer ≥ 0, got {count!r}")
        if type(rate) not in (int, float) or not 0 <= rate <= 1:
            raise ValueError(f"field 'rate' must be a number 0 … 1, got {rate!r}")
        state.lose_updates(campaign, count, float(rate))
        empty = {"count": 0, "rate": 0.0, "lost_requests": 0, "skus_lost": 0}
        return {"campaign": campaign, **state.lost_updates().get(str(campaign), empty)}
    if path == "/_sandbox/drift":
        target = parse_target(body, frozenset({"skus", "updatedAt"}))
        counts, at = parse_counts(body.get("skus")), parse_time(body.get("updatedAt"))
        if target.campaign is not None:
            return {"written": state.set_skus(target.campaign, counts, at)}
        entries = [(sku, count, at) for sku, count in counts.items()]
        return {
            "written": state.v3_stock.write(target.business or 0, target.warehouse or 0, entries)
        }
    target = parse_target(body, frozenset({"skus"}))
    skus = parse_skus(body.get("skus"))
    if target.campaign is not None:
        return {"dropped": state.drop_skus(target.campaign, skus)}
    return {"dropped": state.v3_stock.drop(target.business or 0, target.warehouse or 0, skus)}
