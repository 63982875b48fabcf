"""The sandbox's v3 `POST /v3/businesses/{businessId}/offers/stocks/update` over real HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from sandbox import MarketSandbox
from tests.integration.sandbox_support import AUTH, call, error_messages, now_iso

BUSINESS = 901
ACCOUNTS = {
    "businesses": [
        {
            "id": BUSINESS,
            "campaigns": [
                {"id": 4001, "warehouses": [{"id": 7001}, {"id": 7002}, {"id": 7003}]},
            ],
        },
        {"id": 902, "campaigns": [{"id": 4002, "warehouses": [{"id": 7101}]}]},
    ]
}


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox(accounts=ACCOUNTS) as sb:
        yield sb


def item(sku: str, warehouse: int = 7001, count: int = 1, **extra: Any) -> dict[str, Any]:
    return {"sku": sku, "partnerWarehouseId": warehouse, "count": count, **extra}


def post(
    sandbox: MarketSandbox,
    items: list[Any] | None = None,
    *,
    business: int | str = BUSINESS,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return call(
        sandbox,
        "POST",
        f"/v3/businesses/{business}/offers/stocks/update",
        {"skuItems": items} if body is None else body,
        raw=raw,
        headers=headers,
    )


def held(sandbox: MarketSandbox, warehouse: int = 7001, business: int = BUSINESS) -> dict[str, int]:
    skus = sandbox.v3_state(business, warehouse)["skus"]
    return {sku: entry["count"] for sku, entry in skus.items()}


# --- the body's rules -------------------------------------------------------------------------


def test_2000_items_over_three_warehouses_are_stored_per_warehouse(sandbox: MarketSandbox) -> None:
    at = now_iso()
    items = [item(f"S{i}", 7001 + i % 3, i, updatedAt=at) for i in range(2000)]
    response = post(sandbox, items)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "OK"}
    assert len(held(sandbox, 7001)) + len(held(sandbox, 7002)) + len(held(sandbox, 7003)) == 2000
    assert held(sandbox, 7002)["S1"] == 1
    stored = sandbox.v3_state(BUSINESS, 7003)["skus"]["S2"]
    assert datetime.fromisoformat(stored["updatedAt"]) == datetime.fromisoformat(at)
    (entry,) = sandbox.v3_requests(BUSINESS)
    assert entry["items"] == entry["items_accepted"] == 2000
    assert entry["warehouses"] == {"7001": 667, "7002": 667, "7003": 666}


@pytest.mark.parametrize("size", [0, 2001])
def test_item_count_outside_1_to_2000_is_refused(sandbox: MarketSandbox, size: int) -> None:
    response = post(sandbox, [item(f"S{i}") for i in range(size)])
    assert response.status_code == 400
    assert error_messages(response) == [f"Field 'skuItems' must contain 1 … 2000 items, got {size}"]
    assert sandbox.v3_state() == {"businesses": {}}


def test_duplicate_pair_is_refused_naming_sku_and_warehouse(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("A", 7001), item("A", 7002), item("A", 7001, 5)])
    assert response.status_code == 400
    assert error_messages(response) == ["Duplicate shop-sku 'A' for warehouse '7001'"]
    assert held(sandbox, 7002) == {}  # a 400 refuses the whole request by default


def test_same_sku_in_two_warehouses_is_two_items(sandbox: MarketSandbox) -> None:
    assert post(sandbox, [item("A", 7001, 1), item("A", 7002, 2)]).status_code == 200
    assert held(sandbox, 7001) == {"A": 1}
    assert held(sandbox, 7002) == {"A": 2}


@pytest.mark.parametrize("count", [-1, 2_000_000_001, 1.5, True, "3", None])
def test_count_outside_the_integers_0_to_2e9_is_refused(
    sandbox: MarketSandbox, count: object
) -> None:
    response = post(sandbox, [item("A", count=count)])  # type: ignore[arg-type]
    assert response.status_code == 400
    assert error_messages(response) == [
        f"Stock for 'A' has invalid count {json.dumps(count)}: an integer 0 … 2000000000 expected"
    ]


def test_count_bounds_are_accepted(sandbox: MarketSandbox) -> None:
    assert post(sandbox, [item("Z", count=0), item("M", count=2_000_000_000)]).status_code == 200
    assert held(sandbox) == {"Z": 0, "M": 2_000_000_000}


def test_missing_count_is_refused(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [{"sku": "A", "partnerWarehouseId": 7001}])
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'A' has no count"]


def test_updated_at_in_the_future_is_refused_with_the_v2_text(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("A", updatedAt=now_iso(timedelta(minutes=5)))])
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'A' should not be in the future"]


def test_updated_at_older_than_a_day_is_refused_with_the_v2_text(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("A", updatedAt=now_iso(-timedelta(days=1, minutes=1)))])
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'A' should not be older than a day"]


def test_updated_at_without_offset_is_refused(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("A", updatedAt="2026-01-01T00:00:00")])
    assert response.status_code == 400
    assert "has invalid updatedAt" in error_messages(response)[0]


def test_missing_updated_at_is_the_time_of_receipt(sandbox: MarketSandbox) -> None:
    before = datetime.now(UTC)
    assert post(sandbox, [item("A")]).status_code == 200
    stored = sandbox.v3_state(BUSINESS, 7001)["skus"]["A"]
    assert before <= datetime.fromisoformat(stored["updatedAt"]) <= datetime.now(UTC)


def test_body_over_512_kb_is_refused(sandbox: MarketSandbox) -> None:
    at = now_iso()
    items = [item("S" + "x" * 250 + str(i), 7001, 1, updatedAt=at) for i in range(2000)]
    raw = json.dumps({"skuItems": items}).encode()
    assert len(raw) > 512 * 1024
    response = post(sandbox, raw=raw)
    assert response.status_code == 400
    assert error_messages(response) == [
        f"Request body of {len(raw)} bytes exceeds the limit of {512 * 1024}"
    ]


def test_unknown_warehouse_is_refused_naming_it(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("A", 7001), item("B", 7101), item("C", 7101)])
    assert response.status_code == 400
    assert error_messages(response) == ["Warehouse '7101' is not a warehouse of businessId 901"]
    assert held(sandbox) == {}


def test_business_the_sandbox_does_not_know_accepts_any_warehouse(sandbox: MarketSandbox) -> None:
    assert post(sandbox, [item("A", 5555, 3)], business=777).status_code == 200
    assert held(sandbox, 5555, business=777) == {"A": 3}


@pytest.mark.parametrize("bad", [0, -3, "7001", 1.0, None])
def test_partner_warehouse_id_must_be_a_positive_integer(
    sandbox: MarketSandbox, bad: object
) -> None:
    response = post(sandbox, [item("A", bad)])  # type: ignore[arg-type]
    assert response.status_code == 400
    assert error_messages(response) == [
        f"Stock for 'A' has invalid partnerWarehouseId {json.dumps(bad)}: an integer ≥ 1 expected"
    ]


def test_sku_follows_the_v2_pattern(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("bad\nsku"), item(" "), item("x" * 256)])
    assert response.status_code == 400
    assert error_messages(response) == [
        "Invalid shop-sku 'bad\nsku'",
        "Invalid shop-sku ' '",
        f"Invalid shop-sku '{'x' * 256}'",
    ]


def test_sku_is_compared_after_trimming_like_v2(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item(" A"), item("A ")])
    assert error_messages(response) == ["Duplicate shop-sku 'A' for warehouse '7001'"]


def test_unknown_fields_are_refused(sandbox: MarketSandbox) -> None:
    top = post(sandbox, body={"skuItems": [item("A")], "skus": []})
    assert error_messages(top) == ["Unknown field 'skus' in request"]
    inner = post(sandbox, [item("A", type="FIT")])
    assert error_messages(inner) == ["Unknown field 'type' in stock for 'A'"]
    missing = post(sandbox, body={})
    assert error_messages(missing) == ["Field 'skuItems' is required"]


def test_partial_400_applies_the_valid_items(sandbox: MarketSandbox) -> None:
    sandbox.configure(partial_400=True)
    response = post(sandbox, [item("A", 7001, 4), item("B", 7001, count=-1)])
    assert response.status_code == 400
    assert held(sandbox) == {"A": 4}
    (entry,) = sandbox.v3_requests()
    assert (entry["items_accepted"], entry["items_refused"]) == (1, 1)


def test_missing_credentials_are_401(sandbox: MarketSandbox) -> None:
    response = post(sandbox, [item("A")], headers={})
    assert response.status_code == 401


def test_get_on_the_method_is_405(sandbox: MarketSandbox) -> None:
    response = requests.get(
        f"{sandbox.url}/v3/businesses/{BUSINESS}/offers/stocks/update", timeout=10
    )
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"


# --- limits -----------------------------------------------------------------------------------


def until_of(response: requests.Response) -> datetime:
    return parsedate_to_datetime(response.headers["X-RateLimit-Resource-Until"])


def test_51st_request_in_a_minute_is_420_with_headers(sandbox: MarketSandbox) -> None:
    for i in range(50):
        response = post(sandbox, [item(f"S{i}")])
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Resource-Limit"] == "50"
        assert response.headers["X-RateLimit-Resource-Remaining"] == str(49 - i)
    refused = post(sandbox, [item("late")])
    assert refused.status_code == 420
    assert error_messages(refused) == [
        "Hit rate limit of '50' requests per '1 minute' for resource 'resp' of businessId 901"
    ]
    assert refused.headers["X-RateLimit-Resource-Remaining"] == "0"
    wait = (until_of(refused) - datetime.now(UTC)).total_seconds()
    assert 50 < wait <= 62
    assert "late" not in held(sandbox)
    stats = sandbox.v3_stats()["businesses"]["901"]
    assert (stats["rate_limited"], stats["items_refused"], stats["items_accepted"]) == (1, 0, 50)
    # Another business has its own window.
    assert post(sandbox, [item("A", 7101)], business=902).status_code == 200


def test_requests_leave_the_rolling_window(sandbox: MarketSandbox) -> None:
    sandbox.configure_v3(requests_per_minute=3, window_seconds=1.5)
    assert [post(sandbox, [item(f"S{i}")]).status_code for i in range(3)] == [200] * 3
    refused = post(sandbox, [item("S3")])
    assert refused.status_code == 420
    wait = (until_of(refused) - datetime.now(UTC)).total_seconds()
    assert 0 < wait <= 2.6  # -Until is rounded up to the second
    time.sleep(max(0.0, wait))
    assert post(sandbox, [item("S3")]).status_code == 200
    assert sandbox.v3_stats()["businesses"]["901"]["max_requests_in_window"] == 3


def test_requests_refused_with_400_count_and_5xx_do_not(sandbox: MarketSandbox) -> None:
    sandbox.configure_v3(requests_per_minute=2)
    sandbox.configure(error_500_rate=1.0)
    assert post(sandbox, [item("A")]).status_code == 500
    sandbox.configure(error_500_rate=0.0)
    assert post(sandbox, [item("A", count=-1)]).status_code == 400
    assert post(sandbox, [item("A")]).status_code == 200
    assert post(sandbox, [item("B")]).status_code == 420


def test_fifth_parallel_request_of_a_business_is_420(sandbox: MarketSandbox) -> None:
    sandbox.configure(latency_ms=800)
    results: list[requests.Response] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        response = post(sandbox, [item(f"P{i}")])
        with lock:
            results.append(response)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 200, 200, 200, 420, 420]
    refused = [r for r in results if r.status_code == 420]
    for response in refused:
        assert error_messages(response) == [
            "Hit rate limit of 4 parallel requests for businessId 901"
        ]
        assert response.headers["X-RateLimit-Resource-Limit"] == "50"
        assert until_of(response) > datetime.now(UTC) - timedelta(seconds=1)
    assert sum(e["parallel_limited"] for e in sandbox.v3_requests()) == 2
    assert sandbox.v3_stats()["businesses"]["901"]["parallel_limited"] == 2
    assert sandbox.v3_stats()["businesses"]["901"]["max_parallel_seen"] >= 5


# --- faults, inspection -----------------------------------------------------------------------


def test_injected_500_stores_nothing(sandbox: MarketSandbox) -> None:
    sandbox.configure(error_500_rate=1.0)
    response = post(sandbox, [item("A")])
    assert response.status_code == 500
    assert error_messages(response) == [
        "Internal error 500 for businessId 901 (injected by the sandbox)"
    ]
    assert held(sandbox) == {}
    assert sandbox.v3_requests()[0]["injected"] == "500"


def test_injected_420_carries_a_short_until(sandbox: MarketSandbox) -> None:
    sandbox.configure(error_420_rate=1.0, injected_420_wait_seconds=2.0)
    response = post(sandbox, [item("A")])
    assert response.status_code == 420
    assert error_messages(response) == [
        "Hit rate limit for businessId 901 (injected by the sandbox)"
    ]
    assert 0 < (until_of(response) - datetime.now(UTC)).total_seconds() <= 3
    assert held(sandbox) == {}


def test_dropped_connection_after_storing(sandbox: MarketSandbox) -> None:
    sandbox.configure(drop_after_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        post(sandbox, [item("A", count=9)])
    assert held(sandbox) == {"A": 9}
    assert sandbox.v3_requests()[0]["outcome"] == "drop_after"


def test_dropped_connection_before_storing(sandbox: MarketSandbox) -> None:
    sandbox.configure(drop_before_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        post(sandbox, [item("A")])
    assert held(sandbox) == {}


def test_inspection_endpoints_over_http(sandbox: MarketSandbox) -> None:
    at = now_iso()
    post(sandbox, [item("A", 7001, 1, updatedAt=at), item("B", 7002, 2, updatedAt=at)])
    post(sandbox, [item("C", 7101, 3)], business=902)
    every = requests.get(f"{sandbox.url}/_sandbox/v3/state", timeout=10).json()
    assert set(every["businesses"]) == {"901", "902"}
    assert every["businesses"]["901"]["7002"]["B"]["count"] == 2
    one = requests.get(
        f"{sandbox.url}/_sandbox/v3/state?business=901&warehouse=7001", timeout=10
    ).json()
    assert one["business"] == 901
    assert one["warehouse"] == 7001
    assert set(one["skus"]) == {"A"}
    log = requests.get(f"{sandbox.url}/_sandbox/v3/requests?business=902", timeout=10).json()
    assert [(e["business"], e["items"], e["warehouses"]) for e in log["requests"]] == [
        (902, 1, {"7101": 1})
    ]
    stats = requests.get(f"{sandbox.url}/_sandbox/v3/stats", timeout=10).json()
    assert stats["businesses"]["901"]["items_accepted"] == 2
    assert stats["businesses"]["901"]["requests_by_status"] == {"200": 1}
    configured = requests.post(
        f"{sandbox.url}/_sandbox/v3/config", json={"requests_per_minute": 7}, timeout=10
    )
    assert configured.json()["requests_per_minute"] == 7
    bad = requests.post(f"{sandbox.url}/_sandbox/v3/config", json={"per_minute": 7}, timeout=10)
    assert bad.status_code == 400
    assert "per_minute" in error_messages(bad)[0]
    assert requests.post(f"{sandbox.url}/_sandbox/reset", timeout=10).status_code == 200
    assert sandbox.v3_state() == {"businesses": {}}
    assert sandbox.v3_requests() == []
    assert (
        requests.get(f"{sandbox.url}/_sandbox/v3/config", timeout=10).json()["requests_per_minute"]
        == 7
    )


def test_v2_put_is_unaffected_by_v3_traffic(sandbox: MarketSandbox) -> None:
    for i in range(50):
        post(sandbox, [item(f"S{i}")])
    response = requests.put(
        f"{sandbox.url}/v2/campaigns/4001/offers/stocks",
        json={"skus": [{"sku": "A", "items": [{"count": 1}]}]},
        headers=AUTH,
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Resource-Limit"] == "100000"
    assert sandbox.state(4001)["A"]["count"] == 1


# --- one v3 store and one per-business parallel counter (updates and reads) ----------------------


def read_v3(sandbox: MarketSandbox, warehouse: int, skus: list[str]) -> requests.Response:
    return requests.post(
        f"{sandbox.url}/v3/businesses/{BUSINESS}/offers/stocks",
        json={"partnerWarehouseId": warehouse, "offerIds": skus},
        headers=AUTH,
        timeout=10,
    )


def test_v3_read_returns_what_the_v3_update_wrote(sandbox: MarketSandbox) -> None:
    assert post(sandbox, [item("A", 7001, 5), item("A", 7002, 8), item("B", 7001, 3)]).ok
    answer = read_v3(sandbox, 7001, ["A", "B", "C"]).json()["result"]
    assert answer["partnerWarehouseId"] == 7001
    counts = {o["offerId"]: {s["type"]: s["count"] for s in o["stocks"]} for o in answer["offers"]}
    assert counts == {"A": {"FIT": 5, "AVAILABLE": 5}, "B": {"FIT": 3, "AVAILABLE": 3}}
    other = read_v3(sandbox, 7002, ["A"]).json()["result"]["offers"]
    assert [(o["offerId"], o["stocks"][0]["count"]) for o in other] == [("A", 8)]


def test_drift_written_by_control_is_what_the_store_holds(sandbox: MarketSandbox) -> None:
    assert post(sandbox, [item("A", 7001, 5)]).ok
    response = requests.post(
        f"{sandbox.url}/_sandbox/drift",
        json={"business": BUSINESS, "partnerWarehouseId": 7001, "skus": {"A": 9}},
        timeout=10,
    )
    assert response.ok
    assert held(sandbox) == {"A": 9}


def test_v3_reads_and_updates_share_four_parallel_slots_per_business(
    sandbox: MarketSandbox,
) -> None:
    sandbox.configure(latency_ms=1000)
    start = threading.Barrier(6)
    statuses: list[tuple[str, int]] = []
    lock = threading.Lock()

    def send(kind: str, i: int) -> None:
        start.wait()
        if kind == "update":
            response = post(sandbox, [item(f"P{i}")])
        else:
            response = read_v3(sandbox, 7001, ["A"])
        with lock:
            statuses.append((kind, response.status_code))

    kinds = ["update"] * 3 + ["read"] * 3
    threads = [threading.Thread(target=send, args=(k, i)) for i, k in enumerate(kinds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(s for _, s in statuses) == [200, 200, 200, 200, 420, 420]


def test_v2_read_names_the_warehouse_the_accounts_list_for_the_campaign() -> None:
    accounts = {
        "businesses": [{"id": 903, "campaigns": [{"id": 5001, "warehouses": [{"id": 8123}]}]}]
    }
    with MarketSandbox(accounts=accounts) as sandbox:
        listed = requests.post(
            f"{sandbox.url}/v2/businesses/903/warehouses", json={}, headers=AUTH, timeout=10
        ).json()["result"]["warehouses"]
        assert [(w["id"], w["campaignId"]) for w in listed] == [(8123, 5001)]
        put = requests.put(
            f"{sandbox.url}/v2/campaigns/5001/offers/stocks",
            json={"skus": [{"sku": "A", "items": [{"count": 4}]}]},
            headers=AUTH,
            timeout=10,
        )
        assert put.ok
        read = requests.post(
            f"{sandbox.url}/v2/campaigns/5001/offers/stocks",
            json={"offerIds": ["A"]},
            headers=AUTH,
            timeout=10,
        ).json()["result"]["warehouses"]
        assert [w["warehouseId"] for w in read] == [8123]
        seller = requests.get(f"{sandbox.url}/_sandbox/warehouses?campaign=5001", timeout=10)
        assert seller.json()["warehouseId"] == 8123
