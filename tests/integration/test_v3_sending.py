"""v3 sending (CONTRACT 3a) with real workers, PostgreSQL, RabbitMQ and the sandbox over HTTP.

The rate test runs the issue's full backlog, 300,000 items at the Market's 50 requests a minute:
150 full requests, three windows of the limit, about 2.5 minutes of sending (3.6 minutes in all,
measured on the shared machine). `STOCKSYNC_TEST_V3_BACKLOG` sets another size (a STOCKSYNC_TEST_
name: the suite's fixture clears every other STOCKSYNC_ variable before a test reads it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine, text

from sandbox.server import MarketSandbox
from tests.integration.drain_support import (
    SECRET_KEY,
    counts_at,
    load_pending,
    pending_keys,
    put_changes,
    running_worker,
)
from tests.services import wait_for
from worker.claims import Claims
from worker.rate_limiter import RateLimiter
from worker.routes import apply_routes

pytestmark = pytest.mark.slow

BUSINESS = 901
WAREHOUSES = {4001: 7001, 4002: 7002, 4003: 7003}
V3 = json.dumps(
    {str(c): {"business_id": BUSINESS, "warehouse_id": w} for c, w in WAREHOUSES.items()}
)
ACCOUNTS = {
    "businesses": [
        {
            "id": BUSINESS,
            "campaigns": [{"id": c, "warehouses": [{"id": w}]} for c, w in WAREHOUSES.items()],
        }
    ]
}


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=1, accounts=ACCOUNTS) as box:
        yield box


def held(sandbox: MarketSandbox, warehouse: int) -> dict[str, int]:
    skus = sandbox.v3_state(BUSINESS, warehouse)["skus"]
    return {sku: entry["count"] for sku, entry in skus.items()}


def v3_requests(sandbox: MarketSandbox) -> list[dict[str, object]]:
    return sandbox.v3_requests(BUSINESS)


def test_every_v3_request_the_service_sends_passes_the_sandbox_rules(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    old = datetime.now(UTC) - timedelta(days=3)  # moved into the window when sent
    put_changes(
        engine,
        [
            {"campaign_id": 4001, "sku": "A", "count": 5, "occurred_at": old},
            {"campaign_id": 4002, "sku": "A", "count": 6},  # the same SKU at another warehouse
            {"campaign_id": 4003, "sku": "Ж-" + "x" * 200, "count": 3_000_000_000},  # clamped
            {"campaign_id": 4001, "sku": "NEG", "delta": -4},  # clamped to 0
        ],
    )
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", v3_campaigns=V3):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    requests = v3_requests(sandbox)
    assert requests and all(r["status"] == 200 for r in requests), requests
    assert held(sandbox, 7001) == {"A": 5, "NEG": 0}
    assert held(sandbox, 7002) == {"A": 6}
    assert held(sandbox, 7003) == {"Ж-" + "x" * 200: 2_000_000_000}
    assert sandbox.requests() == []  # nothing went by v2


def test_a_backlog_over_three_warehouses_is_packed_into_full_fair_requests(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    per_warehouse = 4000
    put_changes(
        engine,
        [
            {"campaign_id": c, "sku": f"S{i:05d}", "count": i % 7}
            for c in WAREHOUSES
            for i in range(per_warehouse)
        ],
    )
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", v3_campaigns=V3):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 90)
    requests = v3_requests(sandbox)
    items = [int(r["items"]) for r in requests if r["status"] == 200]  # type: ignore[call-overload]
    assert sum(items) == 3 * per_warehouse
    assert len(items) == 6  # 12,000 items: six full requests
    assert sum(items) / len(items) == 2000
    # Round-robin across the warehouses: the first request holds a third of each.
    first: dict[str, int] = requests[0]["warehouses"]  # type: ignore[assignment]
    assert sorted(first.values()) == [666, 667, 667]
    for warehouse in WAREHOUSES.values():
        assert len(held(sandbox, warehouse)) == per_warehouse


def busiest_minute(requests: list[dict[str, object]]) -> int:
    """The most requests that started within any rolling 60 seconds: every minute checked, one
    window ending at each request's start (where a window's count can grow)."""
    starts = sorted(float(r["started_monotonic"]) for r in requests)  # type: ignore[arg-type]
    busiest, first = 0, 0
    for last, stamp in enumerate(starts):
        while starts[first] <= stamp - 60.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest


@pytest.mark.timeout(290)
def test_two_workers_never_exceed_the_requests_per_minute_of_a_business(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    backlog = int(os.environ.get("STOCKSYNC_TEST_V3_BACKLOG", "300000"))
    limit = 50  # the Market's own: 50 requests in the sandbox's rolling 60 seconds
    sandbox.configure_v3(requests_per_minute=limit, window_seconds=60.0)
    per_campaign = backlog // len(WAREHOUSES)
    for campaign in WAREHOUSES:  # straight into the outbox: the ingest is tested apart
        load_pending(engine, campaign, per_campaign)
    with ExitStack() as stack:
        for n in range(2):
            stack.enter_context(
                running_worker(
                    database_url,
                    rabbit_url,
                    sandbox,
                    tmp_path / f"w{n}.log",
                    v3_campaigns=V3,
                    v3_requests_per_minute=str(limit),
                )
            )
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 240)
    requests = v3_requests(sandbox)
    assert {r["status"] for r in requests} == {200}
    assert len(requests) == -(-per_campaign * len(WAREHOUSES) // 2000)  # every request full
    assert busiest_minute(requests) <= limit
    stats = sandbox.v3_stats()["businesses"][str(BUSINESS)]
    assert stats["rate_limited"] == 0
    assert stats["parallel_limited"] == 0
    assert stats["max_parallel_seen"] <= 4
    assert stats["max_requests_in_window"] <= limit
    assert stats["items_accepted"] == per_campaign * len(WAREHOUSES)


def test_420_and_5xx_are_retried_until_delivered(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    put_changes(engine, [{"campaign_id": c, "sku": f"R{c}", "count": c} for c in WAREHOUSES])

    def answered(status: int) -> bool:
        return any(r["status"] == status for r in v3_requests(sandbox))

    sandbox.configure(error_500_rate=1.0)
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", v3_campaigns=V3):
        wait_for("a 500", lambda: answered(500), 30)
        sandbox.configure(error_500_rate=0.0, error_420_rate=1.0, injected_420_wait_seconds=0.5)
        wait_for("a 420", lambda: answered(420), 60)
        sandbox.configure(error_420_rate=0.0)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
    for campaign, warehouse in WAREHOUSES.items():
        assert held(sandbox, warehouse) == {f"R{campaign}": campaign}


def test_a_400_holds_only_the_refused_item(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(refuse_skus=["BAD"], partial_400=False)
    put_changes(
        engine,
        [
            {"campaign_id": 4001, "sku": "BAD", "count": 1},
            {"campaign_id": 4002, "sku": "BAD", "count": 2},
            *({"campaign_id": 4003, "sku": f"G{i}", "count": i} for i in range(20)),
            {"campaign_id": 4001, "sku": "GOOD", "count": 3},
        ],
    )
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", v3_campaigns=V3):
        wait_for("only the refused items to wait", lambda: pending_keys(engine) == 2, 60)
    assert held(sandbox, 7001) == {"GOOD": 3}
    assert held(sandbox, 7003) == {f"G{i}": i for i in range(20)}
    assert "BAD" not in held(sandbox, 7002)


def test_a_campaign_moved_from_v2_to_v3_keeps_its_value(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    put_changes(engine, [{"campaign_id": 4001, "sku": "M", "count": 40}])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "v2.log"):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    assert counts_at(sandbox, 4001) == {"M": 40}
    since = sandbox.requests()[-1]["seq"]
    put_changes(engine, [{"campaign_id": 4001, "sku": "M", "delta": -1}])
    only_4001 = json.dumps({"4001": {"business_id": BUSINESS, "warehouse_id": 7001}})
    log = tmp_path / "v3.log"
    with running_worker(database_url, rabbit_url, sandbox, log, v3_campaigns=only_4001):
        wait_for("39 at the v3 warehouse", lambda: held(sandbox, 7001) == {"M": 39}, 30)
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
    assert sandbox.requests(since=since) == []  # nothing more by v2 after the move
    assert [r["status"] for r in v3_requests(sandbox)] == [200]  # sent once, the current value
    assert "keys_rerouted" in log.read_text()


def test_moving_back_to_v2_sends_the_current_value_there(engine: Engine) -> None:
    put_changes(engine, [{"campaign_id": 4001, "sku": "K", "count": 5}])
    apply_routes(engine, [], {4001: (BUSINESS, 7001)})
    with engine.begin() as conn:
        conn.execute(text("UPDATE stock SET acked_version = version, acked_value = value"))
    assert pending_keys(engine) == 0
    apply_routes(engine, [], {})
    assert pending_keys(engine) == 1  # pending again: the v2 PUT gets the current value
    apply_routes(engine, [], {})
    assert pending_keys(engine) == 1  # an unchanged routing changes nothing


def _versions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {str(s): int(v) for s, v in conn.execute(text("SELECT sku, version FROM stock"))}


def test_a_move_bumps_only_the_keys_the_old_route_holds_or_has_claimed(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    # Given keys of campaign 4001 sent by v2: one acknowledged, one held after a 400, one claimed
    # by a v2 push (not yet answered), and one pending that no push has claimed
    put_changes(
        engine,
        [
            {"campaign_id": 4001, "sku": "ACKED", "count": 1},
            {"campaign_id": 4001, "sku": "HELD", "count": 2},
            {"campaign_id": 4001, "sku": "CLAIMED", "count": 3},
        ],
    )
    with engine.begin() as conn:
        conn.execute(text("UPDATE stock SET acked_version = version WHERE sku = 'ACKED'"))
        conn.execute(text("UPDATE stock SET parked_version = version WHERE sku = 'HELD'"))
    box = Claims(engine, RateLimiter(engine, 100_000, max_parallel=4), 60.0, 20 * 3600.0)
    [claim] = box.claim(4001, probe_interval=60.0)
    in_flight = box.read(4001, claim.claim_id)
    assert [s.sku for s in in_flight] == ["CLAIMED"]
    put_changes(engine, [{"campaign_id": 4001, "sku": "PENDING", "count": 4}])
    before = _versions(engine)
    # When the campaign moves to v3
    with caplog.at_level(logging.INFO, logger="stocksync.routes"):
        apply_routes(engine, [], {4001: (BUSINESS, 7001)})
    after = _versions(engine)
    # Then the keys whose value the old route holds or may still be acknowledging get a new
    # version (a late v2 200 cannot acknowledge them; v3 sends them), the pending one keeps its
    bumped = sorted(sku for sku in after if after[sku] != before[sku])
    assert bumped == ["ACKED", "CLAIMED", "HELD"], (before, after)
    assert after["PENDING"] == before["PENDING"]
    assert "keys_rerouted campaign=4001 keys=3" in caplog.text
    assert pending_keys(engine) == 4
    # and the old push's late 200 leaves its key pending for v3
    box.acknowledge(4001, claim.claim_id, in_flight)
    assert pending_keys(engine) == 4
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM claimed_key")).scalar_one() == 0


def parked_reason(engine: Engine) -> str | None:
    """The business's parked reason (its route's row: minus the business id)."""
    with engine.connect() as conn:
        reason = conn.execute(
            text("SELECT parked_reason FROM campaign WHERE campaign_id = :c"), {"c": -BUSINESS}
        ).scalar()
    return None if reason is None else str(reason)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_business_is_parked_keeps_its_changes_and_resumes(
    status: int,
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    sandbox: MarketSandbox,
    tmp_path: Path,
) -> None:
    # Given a Market that refuses every update of the business with `status`
    sandbox.configure_v3(forced_status={BUSINESS: status})
    put_changes(engine, [{"campaign_id": c, "sku": f"P{c}", "count": c} for c in WAREHOUSES])
    log = tmp_path / "w.log"

    def refused_sizes() -> list[int]:
        pattern = rf"push business={BUSINESS} skus=(\d+) status={status}\b"
        return [int(n) for n in re.findall(pattern, log.read_text())]

    with running_worker(
        database_url, rabbit_url, sandbox, log, v3_campaigns=V3, probe_interval_seconds="1"
    ):
        # Then the business is parked with the Market's reason, and nothing is lost
        wait_for("the business to be parked", lambda: parked_reason(engine) is not None, 30)
        assert str(status) in str(parked_reason(engine))
        assert pending_keys(engine) == 3
        wait_for("a probe", lambda: len(refused_sizes()) >= 2, 30)
        assert refused_sizes()[0] == 3 and set(refused_sizes()[1:]) == {1}  # probes: one item
        # When the cause is fixed, a probe resumes it and everything is delivered
        sandbox.configure_v3(forced_status={})
        wait_for("the business to resume", lambda: pending_keys(engine) == 0, 30)
    assert parked_reason(engine) is None
    for campaign, warehouse in WAREHOUSES.items():
        assert held(sandbox, warehouse) == {f"P{campaign}": campaign}


def test_a_v3_key_not_sent_for_the_refresh_age_is_sent_again(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a refresh age of 3.6 seconds and one delivered key
    put_changes(engine, [{"campaign_id": 4002, "sku": "R", "count": 4}])

    def accepted_at() -> str | None:
        entry = sandbox.v3_state(BUSINESS, 7002)["skus"].get("R")
        return None if entry is None else str(entry["accepted_at"])

    log = tmp_path / "w.log"
    with running_worker(
        database_url, rabbit_url, sandbox, log, v3_campaigns=V3, refresh_hours="0.001"
    ):
        wait_for("the first delivery", lambda: accepted_at() is not None, 30)
        first = accepted_at()
        # When nothing changes for longer than that, it is sent again, with the same count
        wait_for("a refresh", lambda: accepted_at() != first, 30)
    assert held(sandbox, 7002) == {"R": 4}
    assert [r["items"] for r in v3_requests(sandbox)][:2] == [1, 1]
    assert all(r["status"] == 200 for r in v3_requests(sandbox))


def test_a_420_holds_the_business_until_its_until(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a Market that allows one request in 4 seconds (the service believes it has 50)
    sandbox.configure_v3(requests_per_minute=1, window_seconds=4.0)
    put_changes(
        engine,
        [{"campaign_id": c, "sku": f"U{i}", "count": i} for c in (4001, 4002) for i in range(2000)],
    )
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", v3_campaigns=V3):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 60)
    # Then the request refused with a 420 went again only once -Until had passed: one 420
    requests = v3_requests(sandbox)
    assert [r["status"] for r in requests].count(420) == 1, requests
    sent = [float(r["started_monotonic"]) for r in requests if r["status"] == 200]  # type: ignore[arg-type]
    assert len(sent) == 2
    assert sent[1] - sent[0] >= 4.0  # the window's -Until, never earlier
    assert held(sandbox, 7001) == {f"U{i}": i for i in range(2000)}


def test_requests_another_client_used_are_counted_from_the_remaining_header(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a business allowed 4 requests a minute, of which another client used 2 already
    sandbox.configure_v3(requests_per_minute=4, window_seconds=60.0)
    for n in range(2):
        answer = requests.post(
            f"{sandbox.url}/v3/businesses/{BUSINESS}/offers/stocks/update",
            json={"skuItems": [{"sku": f"OTHER{n}", "partnerWarehouseId": 7003, "count": 1}]},
            headers={"Api-Key": SECRET_KEY},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
    put_changes(
        engine, [{"campaign_id": 4001, "sku": f"X{i:04d}", "count": 1} for i in range(8000)]
    )
    # When the service, which knows only its own requests, sends one at a time
    with running_worker(
        database_url,
        rabbit_url,
        sandbox,
        tmp_path / "w.log",
        v3_campaigns=V3,
        v3_requests_per_minute="4",
        max_parallel_requests_per_campaign="1",
    ):
        wait_for("two requests", lambda: len(v3_requests(sandbox)) >= 4, 30)
        time.sleep(5)  # room for a third, were the Market's count not believed
    # Then after the first answer's -Remaining it sent only what was left: no 420
    statuses = [r["status"] for r in v3_requests(sandbox)]
    assert statuses == [200, 200, 200, 200], statuses
    assert sandbox.v3_stats()["businesses"][str(BUSINESS)]["rate_limited"] == 0
    assert pending_keys(engine) == 4000


def test_a_change_while_a_v3_request_is_in_flight_is_sent_again(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(latency_ms=1500)
    put_changes(engine, [{"campaign_id": 4001, "sku": "A", "count": 10}])
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", v3_campaigns=V3):

        def in_flight() -> bool:
            return sandbox.v3_stats()["in_flight"].get(str(BUSINESS), 0) > 0

        wait_for("a v3 request in flight", in_flight, 30)
        # A change arrives while the request with the older value is at the Market
        put_changes(engine, [{"campaign_id": 4001, "sku": "A", "delta": -4}])
        wait_for(
            "the newer value delivered",
            lambda: held(sandbox, 7001) == {"A": 6} and pending_keys(engine) == 0,
            30,
        )
    # The first 200 acknowledged only the version it carried: the key went again
    assert [(r["status"], r["items"]) for r in v3_requests(sandbox)] == [(200, 1), (200, 1)]
