"""The Market's read methods in the sandbox (v2 getStocks, v3 stocks), their limits and controls.

Pure rules are in sandbox.read_rules, the v3 store and the read ledger in sandbox.read_store.

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
same fault injection and X-RateLimit-Resource-* headers as the PUT, and a forced status (v2: the
campaign's `forced_status`; v3: the business's v3 `forced_status`) as the writes do.

The v3 read answers from the one v3 store, `SandboxState.v3` (sandbox.v3.V3Store), which the v3
update writes, and takes its `begin`/`end`: v3 reads and updates share one per-business parallel
counter. The seller warehouse of a v2 campaign in read answers is the one the accounts list with
that `campaignId` (POST /v2/businesses/{id}/warehouses) when accounts configure the campaign.

Control (`/_sandbox/...`; a target is `"campaign": N` or `"business": B, "partnerWarehouseId": W`):
    POST drift         {target, "skus": {sku: count}, "updatedAt"?: iso}  -> {"written": n}
    POST drop          {target, "skus": [sku, ...]}                       -> {"dropped": n}
    POST lost-updates  {"campaign": N, "count"?: K, "rate"?: 0…1}  next K applicable PUTs (then
                       that fraction) answer as usual but apply nothing; both 0 turns it off
    GET  lost-updates, reads (counters), read-requests?campaign=|business=&since=&limit=,
         warehouses?campaign=N, v3-stock?business=B
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sandbox.read_rules import (
    ReadQuery,
    control_int,
    offer_json,
    paging_json,
    parse_counts,
    parse_read,
    parse_skus,
    parse_target,
    parse_time,
    seller_warehouse_id,
    v2_result,
)
from sandbox.rules import ApiError, RequestRejected, parse_campaign_id

if TYPE_CHECKING:
    from sandbox.handler import SandboxHandler


def _entry(method: str, path: str, campaign: int | None, business: int | None) -> dict[str, Any]:
    from sandbox.handler import new_entry

    keys = {"campaign": campaign, "business": business, "partner_warehouse_id": None}
    return new_entry(method, path, keys, paged=False, offers_asked=0, offers_returned=0)


def _serve(
    h: SandboxHandler,
    entry: dict[str, Any],
    run: Callable[[], dict[str, Any]],
    headers: Callable[[float | None], dict[str, str]],
) -> None:
    """Runs a read, logs it, and writes its answer (or drops the connection)."""
    from sandbox.handler import _Answer, _Drop, _errors, finish

    status, until = 200, None
    try:
        body = {"status": "OK", "result": run()}
    except _Answer as answer:
        status, until = answer.status, answer.until
        body = _errors(*answer.errors)
        entry["first_error"] = answer.errors[0].message
    except _Drop:
        entry["outcome"] = entry["injected"]
        finish(entry, h.state.record_read)
        h._drop()
        return
    entry["status"] = status
    entry["outcome"] = "ok" if status == 200 else "error"
    finish(entry, h.state.record_read)
    h._send(status, body, headers(until))


def _faults_and_type(h: SandboxHandler, key: int, raw: bytes, entry: dict[str, Any]) -> bool:
    """Injected latency and faults as for the PUT, then the JSON content type; True: drop after."""
    from sandbox.handler import _forced, raise_injected

    state = h.state
    faults = state.roll_faults()
    if faults.latency_seconds:
        time.sleep(faults.latency_seconds)
    raise_injected(
        faults, entry, lambda status: _forced(status, key, state.config.injected_420_wait_seconds)
    )
    if raw.strip():  # a read may have no body at all
        h._require_json()
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


def serve_v2_read(h: SandboxHandler, raw_campaign: str, query: Mapping[str, list[str]]) -> None:
    """`POST /v2/campaigns/{campaignId}/offers/stocks` (getStocks)."""
    from sandbox.handler import _Drop, check_campaign, parallel_refusal, window_refusal

    state = h.state
    campaign = parse_campaign_id(raw_campaign)
    entry = _entry("getStocks", h.path, campaign, None)

    def run() -> dict[str, Any]:
        raw = h._checked_body(entry)
        config = state.config
        known = check_campaign(config, campaign, raw_campaign, entry)
        admitted = state.begin(known)  # the same slots as the PUTs of this campaign
        try:
            if not admitted:
                slots, wait = config.max_parallel_requests, config.injected_420_wait_seconds
                raise parallel_refusal(entry, slots, f"campaignId {known}", wait)
            drop_after = _faults_and_type(h, known, raw, entry)
            read = _parse(raw, query, False, entry)
            if read.offer_ids is not None:
                offers, more = state.read_offers(known, read.offer_ids), False
            else:
                offers, more = state.read_page(known, read.after, read.limit)
            reservation = state.reserve_read("v2", known, len(offers))
            config = state.config
            if not reservation.ok:
                limit, window = config.read_offers_per_minute, config.rate_window_seconds
                resource = "resp.result.warehouses.offers.offerId"
                scope = f"campaignId {known}: {len(offers)} offers to return"
                until = reservation.until
                raise window_refusal(entry, limit, window, resource, scope=scope, until=until)
            entry["offers_returned"] = len(offers)
            listed = state.accounts.accounts.campaign_warehouse(known)
            result = v2_result(config, known, offers, more, read.warehouse, listed=listed)
            if drop_after:
                entry["injected"] = "drop_after"
                raise _Drop
            return result
        finally:
            state.end(known, admitted)

    _serve(h, entry, run, lambda until: state.read_headers("v2", campaign, until))


def serve_v3_read(h: SandboxHandler, raw_business: str, query: Mapping[str, list[str]]) -> None:
    """`POST /v3/businesses/{businessId}/offers/stocks` (getStocksOnPartnerWarehouses)."""
    from sandbox.handler import _Answer, _Drop, _forced, parallel_refusal, window_refusal

    state = h.state
    business = parse_campaign_id(raw_business)
    entry = _entry("getStocksOnPartnerWarehouses", h.path, None, business)

    def run() -> dict[str, Any]:
        raw = h._checked_body(entry)
        if business is None:
            raise _Answer(
                400, "BAD_REQUEST", f"businessId must be an integer ≥ 1: {raw_business!r}"
            )
        # A business refused (the v3 `forced_status`) is refused on every method, as v2's
        # getStocks answers a campaign's forced status.
        forced = state.v3.settings.forced_status.get(business)
        if forced is not None:
            entry["injected"] = "forced"
            raise _forced(forced, business, state.config.injected_420_wait_seconds)
        admitted = state.v3.begin(business)
        try:
            config = state.config
            if not admitted:
                slots = state.v3.settings.max_parallel_requests
                wait = config.injected_420_wait_seconds
                raise parallel_refusal(entry, slots, f"businessId {business}", wait)
            drop_after = _faults_and_type(h, business, raw, entry)
            reservation = state.reserve_read("v3", business, 1)  # a 400 counts, as on the PUT
            if not reservation.ok:
                limit, window = config.v3_read_requests_per_minute, config.rate_window_seconds
                scope, until = f"businessId {business}", reservation.until
                raise window_refusal(entry, limit, window, "resp", scope=scope, until=until)
            read = _parse(raw, query, True, entry)
            warehouse = read.warehouse or 0  # parse_read requires it for v3
            stock = state.v3
            if read.offer_ids is not None:
                offers, more = stock.read(business, warehouse, read.offer_ids), False
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
            state.v3.end(business, admitted)

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
    from sandbox.handler import _query_int, since_limit

    state = h.state
    campaign, business = _query_int(query, "campaign"), _query_int(query, "business")
    if (method, path) == ("GET", "/_sandbox/reads"):
        h._send(200, state.reads.stats())
    elif (method, path) == ("GET", "/_sandbox/read-requests"):
        h._send(200, {"requests": state.reads.requests(campaign, business, *since_limit(query))})
    elif (method, path) == ("GET", "/_sandbox/lost-updates"):
        h._send(200, {"campaigns": state.lost_updates()})
    elif (method, path) == ("GET", "/_sandbox/v3-stock"):
        h._send(200, {"businesses": state.v3.snapshot(business)})
    elif (method, path) == ("GET", "/_sandbox/warehouses"):
        config = state.config
        if campaign is None:
            raise ValueError("query parameter 'campaign' is required")
        returns = campaign in config.returns_warehouse_campaigns
        h._send(
            200,
            {
                "campaign": campaign,
                "warehouseId": seller_warehouse_id(
                    config, campaign, state.accounts.accounts.campaign_warehouse(campaign)
                ),
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
        campaign = control_int(body, "campaign")
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
        return {"written": state.v3.write(target.business or 0, target.warehouse or 0, entries)}
    target = parse_target(body, frozenset({"skus"}))
    skus = parse_skus(body.get("skus"))
    if target.campaign is not None:
        return {"dropped": state.drop_skus(target.campaign, skus)}
    return {"dropped": state.v3.drop(target.business or 0, target.warehouse or 0, skus)}
