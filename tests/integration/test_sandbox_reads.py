"""The sandbox's read methods over real HTTP: getStocks (v2), the v3 read, limits and controls."""

from __future__ import annotations

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

CAMPAIGN = 1001


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox() as sb:
        yield sb


def put(sandbox: MarketSandbox, counts: dict[str, int], campaign: int = CAMPAIGN) -> int:
    """PUTs the counts (updatedAt now); returns the status."""
    at = now_iso()
    skus = [{"sku": s, "items": [{"count": c, "updatedAt": at}]} for s, c in counts.items()]
    return call(
        sandbox, "PUT", f"/v2/campaigns/{campaign}/offers/stocks", {"skus": skus}
    ).status_code


def read(
    sandbox: MarketSandbox,
    body: Any = None,
    *,
    campaign: int | str = CAMPAIGN,
    params: dict[str, Any] | None = None,
) -> requests.Response:
    """One getStocks call (POST /v2/campaigns/{id}/offers/stocks)."""
    return call(sandbox, "POST", f"/v2/campaigns/{campaign}/offers/stocks", body, params=params)


def read_v3(
    sandbox: MarketSandbox, body: Any, *, business: int = 77, params: dict[str, Any] | None = None
) -> requests.Response:
    return call(sandbox, "POST", f"/v3/businesses/{business}/offers/stocks", body, params=params)


def control(sandbox: MarketSandbox, name: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{sandbox.url}/_sandbox/{name}", json=body, timeout=10)


def inspect(sandbox: MarketSandbox, name: str, **params: Any) -> Any:
    response = requests.get(f"{sandbox.url}/_sandbox/{name}", params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def counts_by_warehouse(response: requests.Response) -> dict[int, dict[str, dict[str, int]]]:
    """{warehouseId: {offerId: {type: count}}} of a 200 getStocks answer."""
    assert response.status_code == 200, response.text
    return {
        w["warehouseId"]: {
            o["offerId"]: {s["type"]: s["count"] for s in o["stocks"]} for o in w["offers"]
        }
        for w in response.json()["result"]["warehouses"]
    }


# --- v2 getStocks -----------------------------------------------------------------------------


def test_fit_and_available_carry_the_count_the_put_applied(sandbox: MarketSandbox) -> None:
    assert put(sandbox, {"A": 5, "B": 0, "C": 2_000_000_000}) == 200
    response = read(sandbox, {"offerIds": ["A", "B", "C"]})
    assert counts_by_warehouse(response) == {
        CAMPAIGN * 10: {
            "A": {"FIT": 5, "AVAILABLE": 5},
            "B": {"FIT": 0, "AVAILABLE": 0},
            "C": {"FIT": 2_000_000_000, "AVAILABLE": 2_000_000_000},
        }
    }
    assert response.json()["status"] == "OK"
    assert response.json()["result"]["paging"] == {}  # an offerIds list is answered whole
    assert put(sandbox, {"A": 7}) == 200
    assert counts_by_warehouse(read(sandbox, {"offerIds": ["A"]}))[CAMPAIGN * 10] == {
        "A": {"FIT": 7, "AVAILABLE": 7}
    }


def test_updated_at_is_the_one_the_put_sent(sandbox: MarketSandbox) -> None:
    at = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0).isoformat()
    body = {"skus": [{"sku": "A", "items": [{"count": 1, "updatedAt": at}]}]}
    requests.put(sandbox.stocks_url(CAMPAIGN), json=body, headers=AUTH, timeout=10)
    offer = read(sandbox, {"offerIds": ["A"]}).json()["result"]["warehouses"][0]["offers"][0]
    assert datetime.fromisoformat(offer["updatedAt"]) == datetime.fromisoformat(at)


def test_offers_unknown_to_the_sandbox_are_absent(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1})
    assert counts_by_warehouse(read(sandbox, {"offerIds": ["A", "NOPE"]})) == {
        CAMPAIGN * 10: {"A": {"FIT": 1, "AVAILABLE": 1}}
    }
    none = read(sandbox, {"offerIds": ["NOPE"]})
    assert none.json()["result"]["warehouses"] == []
    other_campaign = read(sandbox, {"offerIds": ["A"]}, campaign=2002)
    assert other_campaign.json()["result"]["warehouses"] == []


@pytest.mark.parametrize("size", [0, 501])
def test_offer_ids_outside_1_to_500_are_refused_naming_the_field(
    sandbox: MarketSandbox, size: int
) -> None:
    response = read(sandbox, {"offerIds": [f"S{i}" for i in range(size)]})
    assert response.status_code == 400
    assert error_messages(response) == [f"Field 'offerIds' must contain 1 … 500 items, got {size}"]


def test_500_offer_ids_are_answered_in_one_request(sandbox: MarketSandbox) -> None:
    put(sandbox, {f"S{i}": i for i in range(600)})
    response = read(sandbox, {"offerIds": [f"S{i}" for i in range(500)]})
    offers = counts_by_warehouse(response)[CAMPAIGN * 10]
    assert len(offers) == 500
    assert offers["S499"] == {"FIT": 499, "AVAILABLE": 499}


@pytest.mark.parametrize(
    ("body", "params", "named"),
    [
        ({"offerIds": ["A", " A"]}, None, "'offerIds' must be unique"),
        ({"offerIds": [3]}, None, "offerIds[0]"),
        ({"offerIds": "A"}, None, "'offerIds' must be an array"),
        ({"offerIds": ["A"]}, {"limit": 10}, "cannot be combined with page_token or limit"),
        ({"skus": ["A"]}, None, "Unknown field 'skus'"),
        (None, {"limit": 101}, "'limit' must be an integer 1 … 100"),
        (None, {"limit": 0}, "'limit' must be an integer 1 … 100"),
        (None, {"page_token": "not-ours"}, "'page_token' is not a valid token"),
    ],
    ids=["duplicate", "not-a-string", "not-a-list", "with-paging", "unknown", "101", "0", "token"],
)
def test_bad_reads_are_refused_naming_the_field(
    sandbox: MarketSandbox, body: Any, params: dict[str, Any] | None, named: str
) -> None:
    response = read(sandbox, body, params=params)
    assert response.status_code == 400
    assert named in error_messages(response)[0]


def test_paging_walks_every_offer_once_in_pages_of_at_most_100(sandbox: MarketSandbox) -> None:
    expected = {f"S{i:04d}": i for i in range(250)}
    assert put(sandbox, expected) == 200
    seen: dict[str, int] = {}
    pages: list[int] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = read(sandbox, params=params)  # no body at all: the paged form
        offers = counts_by_warehouse(response).get(CAMPAIGN * 10, {})
        pages.append(len(offers))
        assert not seen.keys() & offers.keys()
        seen.update({sku: types["AVAILABLE"] for sku, types in offers.items()})
        token = response.json()["result"]["paging"].get("nextPageToken")
        if token is None:
            break
        params = {"limit": 100, "page_token": token}
    assert pages == [100, 100, 50]
    assert seen == expected


def test_paging_defaults_to_100_and_takes_the_page_token_alias(sandbox: MarketSandbox) -> None:
    put(sandbox, {f"S{i:03d}": i for i in range(120)})
    first = read(sandbox, {})
    assert len(counts_by_warehouse(first)[CAMPAIGN * 10]) == 100
    token = first.json()["result"]["paging"]["nextPageToken"]
    second = read(sandbox, {}, params={"pageToken": token})
    assert sorted(counts_by_warehouse(second)[CAMPAIGN * 10]) == [f"S{i}" for i in range(100, 120)]
    assert second.json()["result"]["paging"] == {}


def test_a_sku_put_between_pages_is_found_on_a_later_page(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1, "B": 2, "D": 4})
    first = read(sandbox, params={"limit": 2})
    assert sorted(counts_by_warehouse(first)[CAMPAIGN * 10]) == ["A", "B"]
    put(sandbox, {"C": 3})
    token = first.json()["result"]["paging"]["nextPageToken"]
    rest = read(sandbox, params={"limit": 2, "page_token": token})
    assert sorted(counts_by_warehouse(rest)[CAMPAIGN * 10]) == ["C", "D"]


def test_returns_warehouse_is_in_the_answer_only_for_configured_campaigns(
    sandbox: MarketSandbox,
) -> None:
    sandbox.configure(returns_warehouse_campaigns=[CAMPAIGN], warehouse_ids={str(CAMPAIGN): 555})
    put(sandbox, {"A": 5})
    put(sandbox, {"A": 5}, campaign=2002)
    response = read(sandbox, {"offerIds": ["A"]})
    assert [w["warehouseId"] for w in response.json()["result"]["warehouses"]] == [900_000_001, 555]
    assert counts_by_warehouse(response) == {
        900_000_001: {"A": {"FIT": 6, "AVAILABLE": 6}},  # other counts: a client ignores them
        555: {"A": {"FIT": 5, "AVAILABLE": 5}},
    }
    assert inspect(sandbox, "warehouses", campaign=CAMPAIGN) == {
        "campaign": CAMPAIGN,
        "warehouseId": 555,
        "returnsWarehouseId": 900_000_001,
    }
    plain = read(sandbox, {"offerIds": ["A"]}, campaign=2002)
    assert list(counts_by_warehouse(plain)) == [20020]
    assert inspect(sandbox, "warehouses", campaign=2002)["returnsWarehouseId"] is None
    only_seller = read(sandbox, {"offerIds": ["A"], "stocksWarehouseId": 555})
    assert list(counts_by_warehouse(only_seller)) == [555]


def test_other_methods_on_the_read_paths_get_405(sandbox: MarketSandbox) -> None:
    v2 = requests.get(sandbox.stocks_url(CAMPAIGN), timeout=10)
    assert (v2.status_code, v2.headers["Allow"]) == (405, "PUT, POST")
    v3 = requests.put(f"{sandbox.url}/v3/businesses/7/offers/stocks", json={}, timeout=10)
    assert (v3.status_code, v3.headers["Allow"]) == (405, "POST")


def test_reads_need_credentials_and_honour_forced_statuses(sandbox: MarketSandbox) -> None:
    anonymous = requests.post(sandbox.stocks_url(CAMPAIGN), json={"offerIds": ["A"]}, timeout=10)
    assert anonymous.status_code == 401
    sandbox.force_status(CAMPAIGN, 403)
    assert read(sandbox, {"offerIds": ["A"]}).status_code == 403
    assert read(sandbox, {"offerIds": ["A"]}, campaign="x").status_code == 400


@pytest.mark.parametrize("status", [401, 403, 404])
def test_v3_reads_honour_the_business_forced_status(sandbox: MarketSandbox, status: int) -> None:
    # A business the Market refuses refuses every method of it, reads as well as updates.
    body = {"partnerWarehouseId": 5, "offerIds": ["A"]}
    sandbox.configure_v3(forced_status={77: status})
    refused = read_v3(sandbox, body)
    assert refused.status_code == status, refused.text
    assert read_v3(sandbox, body, business=78).status_code == 200  # other businesses answer
    sandbox.configure_v3(forced_status={})
    assert read_v3(sandbox, body).status_code == 200


# --- controls ---------------------------------------------------------------------------------


def test_drift_changes_counts_behind_the_clients_back(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 5, "B": 6})
    at = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    answer = control(
        sandbox, "drift", {"campaign": CAMPAIGN, "skus": {"A": 9, "NEW": 1}, "updatedAt": at}
    )
    assert answer.json() == {"status": "OK", "written": 2}
    response = read(sandbox, {"offerIds": ["A", "B", "NEW"]})
    assert counts_by_warehouse(response)[CAMPAIGN * 10] == {
        "A": {"FIT": 9, "AVAILABLE": 9},
        "B": {"FIT": 6, "AVAILABLE": 6},
        "NEW": {"FIT": 1, "AVAILABLE": 1},
    }
    offer = response.json()["result"]["warehouses"][0]["offers"][0]
    assert datetime.fromisoformat(offer["updatedAt"]) == datetime.fromisoformat(at)
    assert sandbox.state(CAMPAIGN)["A"]["count"] == 9
    assert sandbox.stats()["skus_accepted"] == 2  # drift is not a PUT


@pytest.mark.parametrize(
    "body",
    [
        {"skus": {"A": 1}},
        {"campaign": 0, "skus": {"A": 1}},
        {"campaign": 1, "skus": {}},
        {"campaign": 1, "skus": {"A": -1}},
        {"campaign": 1, "skus": {"A": 1}, "updatedAt": "yesterday"},
        {"campaign": 1, "skus": {"A": 1}, "color": "red"},
    ],
    ids=["no-target", "campaign-0", "no-skus", "negative", "bad-time", "unknown"],
)
def test_bad_drift_is_refused_naming_the_field(
    sandbox: MarketSandbox, body: dict[str, Any]
) -> None:
    answer = control(sandbox, "drift", body)
    assert answer.status_code == 400
    assert "field" in error_messages(answer)[0]
    assert sandbox.state() == {}


def test_dropped_skus_are_absent_from_reads(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1, "B": 2, "C": 3})
    answer = control(sandbox, "drop", {"campaign": CAMPAIGN, "skus": ["A", "C", "NEVER"]})
    assert answer.json() == {"status": "OK", "dropped": 2}
    assert list(
        counts_by_warehouse(read(sandbox, {"offerIds": ["A", "B", "C"]}))[CAMPAIGN * 10]
    ) == ["B"]
    paged = read(sandbox, params={"limit": 100})
    assert list(counts_by_warehouse(paged)[CAMPAIGN * 10]) == ["B"]


def test_lost_updates_answer_200_and_apply_nothing(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1})
    answer = control(sandbox, "lost-updates", {"campaign": CAMPAIGN, "count": 2})
    assert answer.json()["count"] == 2
    assert put(sandbox, {"A": 2}) == 200
    assert put(sandbox, {"A": 3, "B": 3}) == 200
    assert put(sandbox, {"A": 1}, campaign=2002) == 200  # another campaign is not affected
    assert counts_by_warehouse(read(sandbox, {"offerIds": ["A", "B"]}))[CAMPAIGN * 10] == {
        "A": {"FIT": 1, "AVAILABLE": 1}
    }
    assert put(sandbox, {"A": 4}) == 200  # the third is applied again
    assert sandbox.state(CAMPAIGN)["A"]["count"] == 4
    lost = inspect(sandbox, "lost-updates")["campaigns"]
    assert lost == {str(CAMPAIGN): {"count": 0, "rate": 0.0, "lost_requests": 2, "skus_lost": 3}}
    stats = sandbox.stats()["campaigns"][str(CAMPAIGN)]
    assert (stats["skus_lost"], stats["skus_accepted"], stats["skus_refused"]) == (3, 2, 0)
    assert [e["skus_lost"] for e in sandbox.requests(CAMPAIGN)] == [0, 1, 2, 0]


def test_lost_update_rate_loses_that_fraction_until_switched_off(sandbox: MarketSandbox) -> None:
    sandbox.configure(seed=7)
    control(sandbox, "lost-updates", {"campaign": CAMPAIGN, "rate": 0.5})
    for i in range(40):
        assert put(sandbox, {f"S{i}": 1}) == 200
    held = len(sandbox.state(CAMPAIGN))
    assert 8 <= held <= 32  # about half, with room for a seeded generator's luck
    control(sandbox, "lost-updates", {"campaign": CAMPAIGN, "count": 0, "rate": 0})
    assert put(sandbox, {"LAST": 1}) == 200
    assert "LAST" in sandbox.state(CAMPAIGN)
    assert inspect(sandbox, "lost-updates")["campaigns"][str(CAMPAIGN)]["skus_lost"] == 40 - held


def test_a_400_is_not_turned_into_a_lost_update(sandbox: MarketSandbox) -> None:
    control(sandbox, "lost-updates", {"campaign": CAMPAIGN, "count": 1})
    bad = {"skus": [{"sku": "A", "items": [{"count": -1}]}]}
    response = requests.put(sandbox.stocks_url(CAMPAIGN), json=bad, headers=AUTH, timeout=10)
    assert response.status_code == 400
    assert put(sandbox, {"A": 1}) == 200  # this one is the lost one
    assert sandbox.state(CAMPAIGN) == {}


# --- limits -----------------------------------------------------------------------------------


def until_of(response: requests.Response) -> datetime:
    return parsedate_to_datetime(response.headers["X-RateLimit-Resource-Until"])


def test_read_past_the_offers_limit_gets_420_with_the_headers(sandbox: MarketSandbox) -> None:
    sandbox.configure(read_offers_per_minute=250)
    put(sandbox, {f"S{i:03d}": i for i in range(300)})
    first = read(sandbox, params={"limit": 100})
    assert first.headers["X-RateLimit-Resource-Limit"] == "250"
    assert first.headers["X-RateLimit-Resource-Remaining"] == "150"
    token = first.json()["result"]["paging"]["nextPageToken"]
    second = read(sandbox, params={"limit": 100, "page_token": token})
    assert second.status_code == 200
    token = second.json()["result"]["paging"]["nextPageToken"]
    third = read(sandbox, params={"limit": 100, "page_token": token})
    assert third.status_code == 420
    assert "resp.result.warehouses.offers.offerId" in error_messages(third)[0]
    assert third.headers["X-RateLimit-Resource-Remaining"] == "50"
    wait = (until_of(third) - datetime.now(UTC)).total_seconds()
    assert 55 < wait <= 61  # the first page leaves the window a minute after it was answered
    assert "Retry-After" not in third.headers
    # What still fits is answered; offers the sandbox does not hold cost nothing.
    assert read(sandbox, {"offerIds": [f"S{i:03d}" for i in range(50)]}).status_code == 200
    assert read(sandbox, {"offerIds": ["NOPE"]}).status_code == 200
    assert read(sandbox, {"offerIds": ["S299"]}).status_code == 420
    reads = inspect(sandbox, "reads")["campaigns"][str(CAMPAIGN)]
    assert (reads["offers_returned"], reads["max_in_window"], reads["rate_limited"]) == (
        250,
        250,
        2,
    )


def test_offers_leave_the_read_window_when_it_has_passed(sandbox: MarketSandbox) -> None:
    sandbox.configure(read_offers_per_minute=2, rate_window_seconds=1.0)
    put(sandbox, {"A": 1, "B": 2})
    assert read(sandbox, {"offerIds": ["A", "B"]}).status_code == 200
    refused = read(sandbox, {"offerIds": ["A"]})
    assert refused.status_code == 420
    time.sleep(max(0.0, (until_of(refused) - datetime.now(UTC)).total_seconds()) + 0.05)
    assert read(sandbox, {"offerIds": ["A"]}).status_code == 200


def test_the_read_window_is_separate_from_the_put_window(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=3, read_offers_per_minute=3)
    assert put(sandbox, {"A": 1, "B": 2, "C": 3}) == 200
    answer = read(sandbox, {"offerIds": ["A", "B", "C"]})
    assert answer.status_code == 200  # the PUT's full window does not limit reads
    assert answer.headers["X-RateLimit-Resource-Remaining"] == "0"
    assert read(sandbox, {"offerIds": ["A"]}).status_code == 420
    assert put(sandbox, {"D": 4}) == 420  # its own window, still full from the PUT
    sandbox.reset()
    sandbox.configure(rate_limit_skus_per_minute=3, read_offers_per_minute=1)
    put(sandbox, {"A": 1})
    read(sandbox, {"offerIds": ["A"]})
    assert put(sandbox, {"B": 1, "C": 1}) == 200  # a full read window does not limit PUTs


def test_reads_share_the_four_parallel_slots_with_puts(sandbox: MarketSandbox) -> None:
    sandbox.configure(latency_ms=1000)  # long enough for all six to arrive on a busy machine
    start = threading.Barrier(6)
    statuses: dict[str, int] = {}

    def send(key: str) -> None:
        start.wait()
        if key.startswith("PUT"):
            statuses[key] = put(sandbox, {key: 1})
        elif key == "OTHER":
            statuses[key] = read(sandbox, {"offerIds": ["A"]}, campaign=2002).status_code
        else:
            statuses[key] = read(sandbox, {"offerIds": ["A"]}).status_code

    keys = ["PUT1", "PUT2", "READ1", "READ2", "READ3", "OTHER"]
    threads = [threading.Thread(target=send, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(s for k, s in statuses.items() if k != "OTHER") == [200, 200, 200, 200, 420]
    assert statuses["OTHER"] == 200  # the slots are per campaign
    assert sandbox.stats()["campaigns"][str(CAMPAIGN)]["max_parallel_seen"] == 5
    limited_puts = sum(e["parallel_limited"] for e in sandbox.requests(CAMPAIGN))
    reads = inspect(sandbox, "read-requests", campaign=CAMPAIGN)["requests"]
    limited_reads = sum(e["parallel_limited"] for e in reads)
    assert limited_puts + limited_reads == 1
    if limited_reads:
        limited = next(e for e in reads if e["parallel_limited"])
        assert limited["first_error"] == "Hit rate limit of 4 parallel requests for campaignId 1001"


def test_injected_faults_and_latency_apply_to_reads(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1})
    sandbox.configure(error_500_rate=1.0)
    assert read(sandbox, {"offerIds": ["A"]}).status_code == 500
    sandbox.configure(error_500_rate=0.0, drop_before_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        read(sandbox, {"offerIds": ["A"]})
    sandbox.configure(drop_before_rate=0.0, latency_ms=300)
    started = datetime.now(UTC)
    assert read(sandbox, {"offerIds": ["A"]}).status_code == 200
    assert datetime.now(UTC) - started >= timedelta(milliseconds=300)
    assert inspect(sandbox, "reads")["injected"] == {"500": 1, "drop_before": 1}


def test_read_counters_report_requests_and_offers_per_campaign(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1, "B": 2})
    read(sandbox, {"offerIds": ["A", "B", "C"]})
    read(sandbox, params={"limit": 1})
    read(sandbox, params={"limit": 500})
    reads = inspect(sandbox, "reads")
    assert reads["campaigns"][str(CAMPAIGN)] == {
        "requests": 3,
        "requests_by_status": {"200": 2, "400": 1},
        "offers_asked": 4,
        "offers_returned": 3,
        "parallel_limited": 0,
        "rate_limited": 0,
        "max_in_window": 3,
    }
    log = inspect(sandbox, "read-requests", campaign=CAMPAIGN)["requests"]
    assert [(e["method"], e["paged"], e["offers_returned"]) for e in log] == [
        ("getStocks", False, 2),
        ("getStocks", True, 1),
        ("getStocks", False, 0),
    ]
    puts = sandbox.requests(CAMPAIGN)
    assert puts[0]["seq"] < log[0]["seq"]  # one sequence orders reads and PUTs together
    assert sandbox.stats()["requests"] == 1  # reads are not counted as PUTs
    assert sandbox.stats()["reads"]["offers_returned"] == 3
    sandbox.reset()
    assert inspect(sandbox, "reads")["requests"] == 0


# --- v3 ---------------------------------------------------------------------------------------


def test_v3_read_answers_the_stock_of_its_warehouse(sandbox: MarketSandbox) -> None:
    control(sandbox, "drift", {"business": 77, "partnerWarehouseId": 70, "skus": {"A": 4, "B": 5}})
    control(sandbox, "drift", {"business": 77, "partnerWarehouseId": 71, "skus": {"A": 9}})
    response = read_v3(sandbox, {"partnerWarehouseId": 70, "offerIds": ["A", "NOPE"]})
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["partnerWarehouseId"] == 70
    assert result["paging"] == {}
    assert [(o["offerId"], o["stocks"]) for o in result["offers"]] == [
        ("A", [{"type": "FIT", "count": 4}, {"type": "AVAILABLE", "count": 4}])
    ]
    page = read_v3(sandbox, {"partnerWarehouseId": 70}, params={"limit": 1}).json()["result"]
    assert [o["offerId"] for o in page["offers"]] == ["A"]
    token = page["paging"]["nextPageToken"]
    rest = read_v3(sandbox, {"partnerWarehouseId": 70}, params={"page_token": token})
    assert [o["offerId"] for o in rest.json()["result"]["offers"]] == ["B"]
    control(sandbox, "drop", {"business": 77, "partnerWarehouseId": 70, "skus": ["A"]})
    gone = read_v3(sandbox, {"partnerWarehouseId": 70, "offerIds": ["A"]})
    assert gone.json()["result"]["offers"] == []
    assert inspect(sandbox, "v3-stock", business=77)["businesses"]["77"]["71"]["A"]["count"] == 9


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"offerIds": ["A"]}, "Field 'partnerWarehouseId' is required"),
        ({"partnerWarehouseId": "70"}, "'partnerWarehouseId' must be an integer ≥ 1"),
        ({"partnerWarehouseId": 70, "offerIds": [f"S{i}" for i in range(501)]}, "1 … 500"),
        ({"partnerWarehouseId": 70, "stocksWarehouseId": 1}, "Unknown field 'stocksWarehouseId'"),
    ],
    ids=["missing", "string", "501", "v2-field"],
)
def test_bad_v3_reads_are_refused_naming_the_field(
    sandbox: MarketSandbox, body: dict[str, Any], named: str
) -> None:
    response = read_v3(sandbox, body)
    assert response.status_code == 400
    assert named in error_messages(response)[0]


def test_v3_read_past_its_requests_a_minute_gets_420(sandbox: MarketSandbox) -> None:
    assert sandbox.config.v3_read_requests_per_minute == 500
    sandbox.configure(v3_read_requests_per_minute=3)
    body = {"partnerWarehouseId": 70, "offerIds": ["A"]}
    answers = [read_v3(sandbox, body) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 420]
    assert answers[0].headers["X-RateLimit-Resource-Limit"] == "3"
    assert answers[2].headers["X-RateLimit-Resource-Remaining"] == "0"
    assert "of businessId 77" in error_messages(answers[3])[0]
    assert 55 < (until_of(answers[3]) - datetime.now(UTC)).total_seconds() <= 61
    assert read_v3(sandbox, body, business=78).status_code == 200  # per business
    assert inspect(sandbox, "reads")["businesses"]["77"]["rate_limited"] == 1


def test_v3_reads_have_four_parallel_slots_per_business(sandbox: MarketSandbox) -> None:
    sandbox.configure(latency_ms=1000)
    start = threading.Barrier(5)
    statuses: list[int] = []

    def send() -> None:
        start.wait()
        statuses.append(read_v3(sandbox, {"partnerWarehouseId": 70}).status_code)

    threads = [threading.Thread(target=send) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 200, 200, 200, 420]
    assert inspect(sandbox, "reads")["businesses"]["77"]["parallel_limited"] == 1


def test_python_helpers_drive_the_same_controls(sandbox: MarketSandbox) -> None:
    put(sandbox, {"A": 1, "B": 2})
    assert sandbox.drift(CAMPAIGN, {"A": 8}) == 1
    assert sandbox.drop(CAMPAIGN, ["B"]) == 1
    sandbox.lose_updates(CAMPAIGN, count=1)
    assert put(sandbox, {"A": 3}) == 200
    assert counts_by_warehouse(read(sandbox, {"offerIds": ["A", "B"]}))[CAMPAIGN * 10] == {
        "A": {"FIT": 8, "AVAILABLE": 8}
    }
    assert sandbox.read_stats()["campaigns"][str(CAMPAIGN)]["offers_returned"] == 1


def test_reset_forgets_v3_stock_and_lost_update_modes(sandbox: MarketSandbox) -> None:
    control(sandbox, "drift", {"business": 77, "partnerWarehouseId": 70, "skus": {"A": 4}})
    sandbox.lose_updates(CAMPAIGN, count=5)
    sandbox.reset()
    assert inspect(sandbox, "v3-stock")["businesses"] == {}
    assert inspect(sandbox, "lost-updates")["campaigns"] == {}
    assert put(sandbox, {"A": 1}) == 200
    assert sandbox.state(CAMPAIGN)["A"]["count"] == 1
