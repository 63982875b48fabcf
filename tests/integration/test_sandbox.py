"""The Market sandbox over real HTTP: every rule of the page, auth, limits, faults, inspection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import MarketSandbox
from tests.integration.sandbox_support import AUTH, call, error_messages, now_iso

ROOT = Path(__file__).resolve().parents[2]
RATE_HEADERS = (
    "X-RateLimit-Resource-Limit",
    "X-RateLimit-Resource-Remaining",
    "X-RateLimit-Resource-Until",
)


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox() as sb:
        yield sb


def sku(name: str, count: int = 1, **item: Any) -> dict[str, Any]:
    return {"sku": name, "items": [{"count": count, **item}]}


def batch(size: int, prefix: str = "S") -> list[dict[str, Any]]:
    at = now_iso()
    return [sku(f"{prefix}{i}", i, updatedAt=at) for i in range(size)]


def put(
    sandbox: MarketSandbox,
    skus: list[Any] | None = None,
    *,
    campaign: int | str = 1001,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """One PUT to the stocks method; `skus` goes into the page's body unless body/raw is given."""
    return call(
        sandbox,
        "PUT",
        f"/v2/campaigns/{campaign}/offers/stocks",
        {"skus": skus} if body is None else body,
        raw=raw,
        headers=headers,
    )


# --- the page's rules -------------------------------------------------------------------------


def test_batch_of_2000_skus_is_accepted_and_stored(sandbox: MarketSandbox) -> None:
    response = put(sandbox, batch(2000))
    assert response.status_code == 200
    assert response.json() == {"status": "OK"}
    stored = sandbox.state(1001)
    assert len(stored) == 2000
    assert stored["S1999"]["count"] == 1999
    assert datetime.fromisoformat(stored["S0"]["updatedAt"]).tzinfo is not None


def test_sku_is_stored_without_surrounding_whitespace(sandbox: MarketSandbox) -> None:
    assert put(sandbox, [sku("  SKU123 ", 4)]).status_code == 200
    assert set(sandbox.state(1001)) == {"SKU123"}


def test_omitted_updated_at_is_the_time_of_receipt(sandbox: MarketSandbox) -> None:
    before = datetime.now(UTC)
    assert put(sandbox, [sku("A", 3)]).status_code == 200
    stored = datetime.fromisoformat(sandbox.state(1001)["A"]["updatedAt"])
    assert before <= stored <= datetime.now(UTC)


def test_updated_at_with_a_non_utc_offset_is_accepted(sandbox: MarketSandbox) -> None:
    moscow = timezone(timedelta(hours=3))
    at = (datetime.now(moscow) - timedelta(hours=1)).replace(microsecond=0).isoformat()
    assert at.endswith("+03:00")
    assert put(sandbox, [sku("A", 3, updatedAt=at)]).status_code == 200
    stored = datetime.fromisoformat(sandbox.state(1001)["A"]["updatedAt"])
    assert stored == datetime.fromisoformat(at)


@pytest.mark.parametrize("size", [0, 2001])
def test_number_of_skus_outside_1_to_2000_is_refused(sandbox: MarketSandbox, size: int) -> None:
    response = put(sandbox, batch(size))
    assert response.status_code == 400
    assert "1 … 2000" in error_messages(response)[0]
    assert sandbox.state() == {}


def test_duplicate_sku_in_one_request_is_refused(sandbox: MarketSandbox) -> None:
    response = put(sandbox, [sku("A", 1), sku("B", 2), sku(" A", 3)])
    assert response.status_code == 400
    assert error_messages(response) == ["Duplicate shop-sku 'A' for warehouse '1001'"]
    assert sandbox.state() == {}


@pytest.mark.parametrize("name", ["", "   ", "a\x01b", "a\nb", "a\x7fb", "x" * 256])
def test_sku_breaking_the_market_pattern_is_refused(sandbox: MarketSandbox, name: str) -> None:
    response = put(sandbox, [sku(name)])
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "INVALID_SHOP_SKU"


def test_longest_sku_and_inner_tab_are_within_the_pattern(sandbox: MarketSandbox) -> None:
    assert put(sandbox, [sku("x" * 255), sku("a\tb")]).status_code == 200


@pytest.mark.parametrize("items", [[], [{"count": 1}, {"count": 2}]])
def test_sku_must_carry_exactly_one_item(sandbox: MarketSandbox, items: list[Any]) -> None:
    response = put(sandbox, [{"sku": "A", "items": items}])
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'A' must have exactly one item in 'items'"]


@pytest.mark.parametrize("count", [-1, 2_000_000_001, 2.5, "7", True, None])
def test_count_must_be_an_integer_from_0_to_2_billion(sandbox: MarketSandbox, count: Any) -> None:
    response = put(sandbox, [sku("A", count)])
    assert response.status_code == 400
    assert error_messages(response)[0].startswith("Stock for 'A' has invalid count")


def test_count_bounds_0_and_2_billion_are_accepted(sandbox: MarketSandbox) -> None:
    assert put(sandbox, [sku("LOW", 0), sku("HIGH", 2_000_000_000)]).status_code == 200
    assert sandbox.state(1001)["HIGH"]["count"] == 2_000_000_000


def test_updated_at_in_the_future_is_refused(sandbox: MarketSandbox) -> None:
    response = put(sandbox, [sku("A", updatedAt=now_iso(timedelta(minutes=1)))])
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'A' should not be in the future"]


def test_updated_at_older_than_a_day_is_refused(sandbox: MarketSandbox) -> None:
    response = put(sandbox, [sku("A", updatedAt=now_iso(-timedelta(days=1, minutes=1)))])
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'A' should not be older than a day"]


def test_updated_at_23_hours_old_is_accepted(sandbox: MarketSandbox) -> None:
    assert put(sandbox, [sku("A", updatedAt=now_iso(-timedelta(hours=23)))]).status_code == 200


@pytest.mark.parametrize("at", ["2026-11-28T10:00:00", "2026-11-28", "yesterday"])
def test_updated_at_without_offset_or_not_a_date_time_is_refused(
    sandbox: MarketSandbox, at: str
) -> None:
    response = put(sandbox, [sku("A", updatedAt=at)])
    assert response.status_code == 400
    assert "invalid updatedAt" in error_messages(response)[0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"skus": [sku("A")], "warehouseId": 5}, "warehouseId"),
        ({"skus": [{"sku": "A", "warehouseId": 5, "items": [{"count": 1}]}]}, "warehouseId"),
        ({"skus": [sku("A", type="FIT")]}, "type"),
    ],
)
def test_unknown_fields_such_as_warehouse_id_or_type_are_refused(
    sandbox: MarketSandbox, body: dict[str, Any], field: str
) -> None:
    response = put(sandbox, body=body)
    assert response.status_code == 400
    assert f"Unknown field '{field}'" in error_messages(response)[0]
    assert sandbox.state() == {}


def test_body_over_512_kb_is_refused_and_512_kb_exactly_is_accepted(
    sandbox: MarketSandbox,
) -> None:
    raw = json.dumps({"skus": [sku("A")]}).encode()
    assert put(sandbox, raw=raw.ljust(512 * 1024)).status_code == 200
    response = put(sandbox, raw=raw.ljust(512 * 1024 + 1))
    assert response.status_code == 400
    assert "exceeds the limit of 524288" in error_messages(response)[0]


def test_body_that_is_not_json_or_lacks_skus_is_refused(sandbox: MarketSandbox) -> None:
    assert put(sandbox, raw=b"{not json").status_code == 400
    assert put(sandbox, body={}).status_code == 400
    assert put(sandbox, body={"skus": "A"}).status_code == 400


def test_body_must_be_sent_as_json(sandbox: MarketSandbox) -> None:
    response = requests.put(
        f"{sandbox.url}/v2/campaigns/1/offers/stocks",
        data=json.dumps({"skus": [sku("A")]}),
        headers={**AUTH, "Content-Type": "text/plain"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["code"] == "UNSUPPORTED_MEDIA_TYPE"


@pytest.mark.parametrize("campaign", ["0", "-3", "abc"])
def test_campaign_id_must_be_an_integer_of_at_least_1(
    sandbox: MarketSandbox, campaign: str
) -> None:
    response = put(sandbox, [sku("A")], campaign=campaign)
    assert response.status_code == 400
    assert "campaignId" in error_messages(response)[0]


def test_other_methods_and_unversioned_paths_are_not_the_method(sandbox: MarketSandbox) -> None:
    assert (
        requests.get(f"{sandbox.url}/v2/campaigns/1/offers/stocks", timeout=10).status_code == 405
    )
    unversioned = requests.put(
        f"{sandbox.url}/campaigns/1/offers/stocks", json={"skus": [sku("A")]}, timeout=10
    )
    assert unversioned.status_code == 404


# --- authentication and campaigns ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Api-Key": ""}, {"Api-Key": "Bearer abc"}, {"Authorization": "OAuth abc"}],
    ids=["none", "empty-key", "bearer-in-api-key", "not-bearer"],
)
def test_missing_or_malformed_credentials_get_401(
    sandbox: MarketSandbox, headers: dict[str, str]
) -> None:
    response = put(sandbox, [sku("A")], headers=headers)
    assert response.status_code == 401
    assert response.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert sandbox.state() == {}


def test_any_non_empty_credential_is_accepted_when_none_are_configured(
    sandbox: MarketSandbox,
) -> None:
    assert put(sandbox, [sku("A")], headers={"Api-Key": "whatever"}).status_code == 200
    assert put(sandbox, [sku("B")], headers={"Authorization": "Bearer tok"}).status_code == 200


def test_wrong_api_key_or_token_gets_403_and_right_ones_200(sandbox: MarketSandbox) -> None:
    sandbox.configure(api_keys=["good-key"], oauth_tokens=["good-token"])
    assert put(sandbox, [sku("A")], headers={"Api-Key": "bad"}).status_code == 403
    assert put(sandbox, [sku("A")], headers={"Authorization": "Bearer bad"}).status_code == 403
    assert put(sandbox, [sku("A")], headers={"Api-Key": "good-key"}).status_code == 200
    good_token = {"Authorization": "Bearer good-token"}
    assert put(sandbox, [sku("B")], headers=good_token).status_code == 200


def test_unknown_campaign_gets_404(sandbox: MarketSandbox) -> None:
    sandbox.configure(known_campaigns=[1001])
    assert put(sandbox, [sku("A")], campaign=1002).status_code == 404
    assert put(sandbox, [sku("A")], campaign=1001).status_code == 200
    assert list(sandbox.state()) == ["1001"]


def test_forced_status_lasts_until_it_is_cleared(sandbox: MarketSandbox) -> None:
    sandbox.force_status(5, 403)
    assert [put(sandbox, [sku("A")], campaign=5).status_code for _ in range(2)] == [403, 403]
    assert put(sandbox, [sku("A")], campaign=6).status_code == 200
    sandbox.force_status(5, None)
    assert put(sandbox, [sku("A")], campaign=5).status_code == 200


# --- 400: whole request or partial ----------------------------------------------------------------


def test_one_bad_sku_refuses_the_whole_request_by_default(sandbox: MarketSandbox) -> None:
    response = put(sandbox, [sku("A"), sku("B", -1), sku("C")])
    assert response.status_code == 400
    assert sandbox.state() == {}


def test_partial_400_applies_valid_skus_and_names_each_bad_one(sandbox: MarketSandbox) -> None:
    sandbox.configure(partial_400=True)
    future = now_iso(timedelta(hours=1))
    response = put(sandbox, [sku("A"), sku("B", -1), sku("C"), sku("D", updatedAt=future)])
    assert response.status_code == 400
    errors = error_messages(response)
    assert len(errors) == 2
    assert "'B'" in errors[0]
    assert errors[1] == "Stock for 'D' should not be in the future"
    assert set(sandbox.state(1001)) == {"A", "C"}


@pytest.mark.parametrize("partial", [False, True])
def test_refused_sku_is_isolated_in_a_2000_sku_batch(sandbox: MarketSandbox, partial: bool) -> None:
    sandbox.configure(refuse_skus=["BAD-1"], partial_400=partial)
    skus = batch(1999)
    skus.insert(1000, sku("BAD-1", 5))
    response = put(sandbox, skus)
    assert response.status_code == 400
    assert error_messages(response) == ["Stock for 'BAD-1' is refused by the sandbox"]
    assert len(sandbox.state(1001)) == (1999 if partial else 0)
    assert "BAD-1" not in sandbox.state(1001)


# --- rate limits ----------------------------------------------------------------------------------


def until_of(response: requests.Response) -> datetime:
    return parsedate_to_datetime(response.headers["X-RateLimit-Resource-Until"])


def test_request_past_the_rolling_window_limit_gets_420(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=3000)
    first = put(sandbox, batch(2000, "A"))
    assert first.status_code == 200
    assert first.headers["X-RateLimit-Resource-Limit"] == "3000"
    assert first.headers["X-RateLimit-Resource-Remaining"] == "1000"
    second = put(sandbox, batch(2000, "B"))
    assert second.status_code == 420
    message = error_messages(second)[0]
    assert message.startswith("Hit rate limit of '3000'")
    assert "for resource 'req.skus'" in message
    assert second.headers["X-RateLimit-Resource-Remaining"] == "1000"
    assert "Retry-After" not in second.headers
    wait = (until_of(second) - datetime.now(UTC)).total_seconds()
    assert 55 < wait <= 61  # the first batch leaves the window a minute after it came
    assert set(sandbox.state(1001)) == {f"A{i}" for i in range(2000)}
    assert put(sandbox, batch(1000, "C")).status_code == 200  # what still fits is accepted


def test_skus_leave_the_window_when_it_has_passed(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=10, rate_window_seconds=1.0)
    assert put(sandbox, batch(10)).status_code == 200
    refused = put(sandbox, batch(1, "X"))
    assert refused.status_code == 420
    time.sleep(max(0.0, (until_of(refused) - datetime.now(UTC)).total_seconds()) + 0.05)
    assert put(sandbox, batch(1, "X")).status_code == 200


def test_skus_of_4xx_answers_count_and_of_5xx_answers_do_not(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=100)
    refused = put(sandbox, [sku("A"), sku("A"), sku("B")])  # 400: duplicate
    assert refused.status_code == 400
    assert refused.headers["X-RateLimit-Resource-Remaining"] == "97"
    sandbox.configure(error_500_rate=1.0)
    failed = put(sandbox, batch(5))
    assert failed.status_code == 500
    assert failed.headers["X-RateLimit-Resource-Remaining"] == "97"


def test_unlimited_rate_lets_any_volume_through(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=None)
    for _ in range(3):
        assert put(sandbox, batch(2000)).status_code == 200
    stats = sandbox.stats()
    assert stats["rate_limited"] == 0
    assert stats["campaigns"]["1001"]["max_skus_accepted_in_window"] == 6000


def test_every_answer_carries_the_rate_limit_headers(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=5, known_campaigns=[1001, 7])
    sandbox.force_status(7, 500)
    responses = [
        put(sandbox, [sku("A")]),  # 200
        put(sandbox, [sku("B", -1)]),  # 400
        put(sandbox, [sku("C")], headers={}),  # 401
        put(sandbox, [sku("D")], campaign=1002),  # 404
        put(sandbox, batch(6)),  # 420
        put(sandbox, [sku("E")], campaign=7),  # 500
    ]
    assert [r.status_code for r in responses] == [200, 400, 401, 404, 420, 500]
    for response in responses:
        assert all(name in response.headers for name in RATE_HEADERS), response.status_code
        assert until_of(response) > datetime.now(UTC) - timedelta(seconds=1)
        assert "Retry-After" not in response.headers


def test_fifth_parallel_request_of_a_campaign_gets_420(sandbox: MarketSandbox) -> None:
    sandbox.configure(latency_ms=1000)  # long enough for all six to arrive on a busy machine
    start = threading.Barrier(6)
    results: dict[str, requests.Response] = {}

    def send(key: str, campaign: int) -> None:
        start.wait()
        results[key] = put(sandbox, [sku(key)], campaign=campaign)

    threads = [threading.Thread(target=send, args=(f"P{i}", 7)) for i in range(5)]
    threads.append(threading.Thread(target=send, args=("OTHER", 8)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for key, r in results.items() if key != "OTHER")
    assert statuses == [200, 200, 200, 200, 420]
    assert results["OTHER"].status_code == 200  # the limit is per campaign
    limited = next(r for r in results.values() if r.status_code == 420)
    assert error_messages(limited) == ["Hit rate limit of 4 parallel requests for campaignId 7"]
    assert sandbox.stats()["campaigns"]["7"]["max_parallel_seen"] == 5
    assert sum(e["parallel_limited"] for e in sandbox.requests(7)) == 1


# --- fault injection ------------------------------------------------------------------------------


def test_injected_500_applies_nothing(sandbox: MarketSandbox) -> None:
    sandbox.configure(error_500_rate=1.0)
    response = put(sandbox, [sku("A")])
    assert response.status_code == 500
    assert sandbox.state() == {}
    assert sandbox.stats()["injected"] == {"500": 1}


def test_injected_420_applies_nothing_and_asks_for_a_short_wait(sandbox: MarketSandbox) -> None:
    sandbox.configure(error_420_rate=1.0, injected_420_wait_seconds=2)
    response = put(sandbox, [sku("A")])
    assert response.status_code == 420
    assert 0 < (until_of(response) - datetime.now(UTC)).total_seconds() <= 3
    assert sandbox.state() == {}


def test_dropped_connection_before_applying_leaves_no_stock(sandbox: MarketSandbox) -> None:
    sandbox.configure(drop_before_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        put(sandbox, [sku("A")])
    assert sandbox.state() == {}
    assert sandbox.requests()[-1]["outcome"] == "drop_before"


def test_dropped_connection_after_applying_keeps_the_stock(sandbox: MarketSandbox) -> None:
    sandbox.configure(drop_after_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        put(sandbox, [sku("A", 9)])
    assert sandbox.state(1001)["A"]["count"] == 9
    assert sandbox.stats()["requests_by_status"] == {"dropped": 1}


def test_added_latency_delays_the_answer(sandbox: MarketSandbox) -> None:
    sandbox.configure(latency_ms=300, latency_jitter_ms=100, seed=1)
    started = time.monotonic()
    assert put(sandbox, [sku("A")]).status_code == 200
    assert 0.3 <= time.monotonic() - started < 2.0


def test_injected_faults_repeat_with_the_same_seed(sandbox: MarketSandbox) -> None:
    def run() -> list[int]:
        sandbox.reset()
        sandbox.configure(error_500_rate=0.5, seed=42)
        return [put(sandbox, [sku("A")]).status_code for _ in range(12)]

    first = run()
    assert set(first) == {200, 500}
    assert run() == first


# --- inspection and control -----------------------------------------------------------------------


def test_older_updated_at_is_applied_and_counted_as_stale(sandbox: MarketSandbox) -> None:
    assert put(sandbox, [sku("A", 5, updatedAt=now_iso(-timedelta(minutes=1)))]).status_code == 200
    assert put(sandbox, [sku("A", 3, updatedAt=now_iso(-timedelta(minutes=2)))]).status_code == 200
    assert sandbox.state(1001)["A"]["count"] == 3  # last write wins, as on the Market
    assert sandbox.stats()["stale_overwrites"] == 1


def test_state_endpoint_returns_the_accepted_stock(sandbox: MarketSandbox) -> None:
    put(sandbox, [sku("A", 2)], campaign=1)
    put(sandbox, [sku("B", 3)], campaign=2)
    everything = requests.get(f"{sandbox.url}/_sandbox/state", timeout=10).json()
    assert set(everything["campaigns"]) == {"1", "2"}
    one = requests.get(f"{sandbox.url}/_sandbox/state?campaign=2", timeout=10).json()
    assert one["campaign"] == 2
    assert set(one["skus"]["B"]) == {"count", "updatedAt", "accepted_at"}
    assert one["skus"]["B"]["count"] == 3


def test_requests_and_stats_endpoints_describe_each_request(sandbox: MarketSandbox) -> None:
    put(sandbox, batch(3))
    put(sandbox, [sku("X", -1)])
    log = requests.get(f"{sandbox.url}/_sandbox/requests", timeout=10).json()["requests"]
    assert [(e["campaign"], e["status"], e["skus"]) for e in log] == [
        (1001, 200, 3),
        (1001, 400, 1),
    ]
    first = log[0]
    assert first["bytes"] > 0
    assert first["started_monotonic"] <= first["ended_monotonic"]
    assert first["parallel_limited"] is False
    stats = requests.get(f"{sandbox.url}/_sandbox/stats", timeout=10).json()
    assert stats["requests_by_status"] == {"200": 1, "400": 1}
    assert stats["skus_accepted"] == 3
    assert stats["campaigns"]["1001"]["max_parallel_seen"] == 1
    assert stats["campaigns"]["1001"]["max_skus_accepted_in_window"] == 3


def test_request_log_is_bounded_while_counters_stay_exact(sandbox: MarketSandbox) -> None:
    sandbox.configure(request_log_max=3)
    for i in range(5):
        put(sandbox, [sku(f"A{i}")])
    assert [e["seq"] for e in sandbox.requests()] == [3, 4, 5]
    assert sandbox.stats()["requests"] == 5
    assert sandbox.stats()["skus_accepted"] == 5


def test_config_endpoint_applies_partial_updates_and_refuses_bad_ones(
    sandbox: MarketSandbox,
) -> None:
    url = f"{sandbox.url}/_sandbox/config"
    updated = requests.post(
        url, json={"partial_400": True, "forced_status": {"9": 404}}, timeout=10
    )
    assert updated.status_code == 200
    assert updated.json()["partial_400"] is True
    assert updated.json()["rate_limit_skus_per_minute"] == 100_000  # untouched
    assert put(sandbox, [sku("A")], campaign=9).status_code == 404
    assert requests.post(url, json={"no_such": 1}, timeout=10).status_code == 400
    assert requests.post(url, json={"error_500_rate": 2}, timeout=10).status_code == 400
    assert requests.get(url, timeout=10).json()["forced_status"] == {"9": 404}


def test_reset_clears_stock_log_and_counters_but_keeps_settings(sandbox: MarketSandbox) -> None:
    sandbox.configure(rate_limit_skus_per_minute=10)
    put(sandbox, batch(10))
    assert requests.post(f"{sandbox.url}/_sandbox/reset", timeout=10).status_code == 200
    assert sandbox.state() == {}
    assert sandbox.requests() == []
    assert sandbox.stats()["requests"] == 0
    assert sandbox.config.rate_limit_skus_per_minute == 10
    assert put(sandbox, batch(10)).status_code == 200  # the rate window was cleared too


def test_command_line_serves_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--unlimited", "--api-key", "k1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("Market sandbox listening on http://127.0.0.1:")
        url = line.split()[-1]
        response = requests.put(
            f"{url}/v2/campaigns/3/offers/stocks",
            json={"skus": [sku("A")]},
            headers={"Api-Key": "k1"},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Resource-Limit"] == str(2**31 - 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
