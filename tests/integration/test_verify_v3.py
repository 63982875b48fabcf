"""The verify sweep of v3 campaigns (CONTRACT 3b): a real worker with beat, PostgreSQL, RabbitMQ
and the sandbox over HTTP, reading back with `POST /v3/businesses/{id}/offers/stocks`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine

from sandbox.server import MarketSandbox
from tests.integration.drain_support import SECRET_KEY, pending_keys, put_changes, running_worker
from tests.integration.test_v3_sending import ACCOUNTS, BUSINESS, V3, held
from tests.integration.test_verify import FAST, drifts, one, run_verify
from tests.services import wait_for

pytestmark = pytest.mark.slow

CAMPAIGN, WAREHOUSE = 4001, 7001  # a v3 campaign of test_v3_sending's accounts


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox(port=0, api_keys=[SECRET_KEY], seed=1, accounts=ACCOUNTS) as box:
        yield box


def test_drift_of_a_v3_campaigns_keys_is_found_and_repaired(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    ours = {f"V{i:03d}": i + 1 for i in range(40)}
    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": s, "count": v} for s, v in ours.items()])
    settings = {**FAST, "v3_campaigns": V3}
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **settings):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        assert held(sandbox, WAREHOUSE) == ours
        # Someone else rewrites 5 counts and deletes 2 SKUs at the partner warehouse.
        target = {"business": BUSINESS, "partnerWarehouseId": WAREHOUSE}
        changed = {f"V{i:03d}": 9000 + i for i in range(5)}
        for path, body in (("drift", {"skus": changed}), ("drop", {"skus": ["V010", "V011"]})):
            answer = requests.post(
                f"{sandbox.url}/_sandbox/{path}", json={**target, **body}, timeout=10
            )
            answer.raise_for_status()
        wait_for("the drift found", lambda: len(drifts(engine, CAMPAIGN)) >= 7, 40)
        wait_for("ours again at the Market", lambda: held(sandbox, WAREHOUSE) == ours, 30)
    found = drifts(engine, CAMPAIGN)
    assert {r.sku: r.kind for r in found} == {
        **{s: "count" for s in changed},
        "V010": "missing",
        "V011": "missing",
    }
    assert all(r.repaired for r in found)
    assert one(
        engine, "SELECT drift_repaired_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
    ) == len(found)
    # Read by v3 only, counted per business (none of it by the campaign's v2 getStocks).
    reads = requests.get(f"{sandbox.url}/_sandbox/reads", timeout=10).json()
    assert str(CAMPAIGN) not in reads.get("campaigns", {})
    v3_reads = requests.get(
        f"{sandbox.url}/_sandbox/read-requests", params={"business": BUSINESS}, timeout=10
    ).json()["requests"]
    assert v3_reads and all(r["status"] == 200 for r in v3_reads), v3_reads


def v3_reads(sandbox: MarketSandbox, since: str | None = None) -> list[dict[str, object]]:
    """The business's v3 read requests (started after `since`, an ISO time, when given)."""
    entries = requests.get(
        f"{sandbox.url}/_sandbox/read-requests", params={"business": BUSINESS}, timeout=10
    ).json()["requests"]
    return [r for r in entries if since is None or str(r["started_at"]) > since]


def business_parked(engine: Engine) -> str | None:
    """The business route's parked reason (its row: minus the business id)."""
    reason = one(engine, "SELECT parked_reason FROM campaign WHERE campaign_id = :c", c=-BUSINESS)
    return None if reason is None else str(reason)


def test_a_v3_campaign_whose_business_is_parked_is_not_swept(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    # Given a v3 campaign's keys delivered and its sweep under way
    ours = {f"V{i:03d}": i + 1 for i in range(40)}
    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": s, "count": v} for s, v in ours.items()])
    # no probe during the test: the business stays parked once parked
    settings = {**FAST, "v3_campaigns": V3, "probe_interval_seconds": "3600"}
    with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log", None, **settings):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        wait_for("the sweep to read", lambda: len(v3_reads(sandbox)) >= 1, 30)
        # When an update of the business is refused with a 403: its route is parked
        sandbox.configure_v3(forced_status={BUSINESS: 403})
        put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": "V039", "count": 1000}])
        wait_for("the business to be parked", lambda: business_parked(engine) is not None, 30)
        sandbox.configure_v3(forced_status={})  # the Market answers again; no probe for 1 h
        time.sleep(1.0)  # a read under way when the route was parked ends
        since = datetime.now(UTC).isoformat()
        checked = one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
        # and someone else rewrites 5 counts: a sweep would find them within seconds
        target = {"business": BUSINESS, "partnerWarehouseId": WAREHOUSE}
        changed = {f"V{i:03d}": 9000 + i for i in range(5)}
        answer = requests.post(
            f"{sandbox.url}/_sandbox/drift", json={**target, "skus": changed}, timeout=10
        )
        answer.raise_for_status()
        time.sleep(8.0)  # 16 beat ticks; the round's pace reads about 2.5 keys a second
        # Then the parked business is not read (a parked route gets only probes) ...
        assert v3_reads(sandbox, since) == []
        assert drifts(engine, CAMPAIGN) == []
        assert checked == one(
            engine, "SELECT keys_checked_total FROM campaign WHERE campaign_id = :c", c=CAMPAIGN
        )
    # ... nor by `stocksync verify`, which says why
    verify = run_verify(
        database_url, sandbox, "--campaign", str(CAMPAIGN), "--json", v3_campaigns=V3
    )
    assert verify.returncode == 3, verify.stdout + verify.stderr
    (report,) = json.loads(verify.stdout)["campaigns"]
    assert (report["checked"], report["stopped"]) == (0, "campaign parked"), report
    assert f"campaign {CAMPAIGN} not read through: campaign parked" in verify.stderr
    assert v3_reads(sandbox, since) == []


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_v3_read_refused_stops_the_sweep_and_nothing_else(
    status: int,
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    sandbox: MarketSandbox,
    tmp_path: Path,
) -> None:
    # Given a v3 campaign's keys delivered and its sweep under way
    ours = {f"V{i:03d}": i + 1 for i in range(40)}
    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": s, "count": v} for s, v in ours.items()])
    log = tmp_path / "w.log"
    settings = {**FAST, "v3_campaigns": V3}
    with running_worker(database_url, rabbit_url, sandbox, log, None, **settings):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 30)
        wait_for("the sweep to read", lambda: len(v3_reads(sandbox)) >= 1, 30)
        # When the Market refuses the business with `status` and someone rewrites 5 counts
        since = datetime.now(UTC).isoformat()
        sandbox.configure_v3(forced_status={BUSINESS: status})
        target = {"business": BUSINESS, "partnerWarehouseId": WAREHOUSE}
        changed = {f"V{i:03d}": 9000 + i for i in range(5)}
        answer = requests.post(
            f"{sandbox.url}/_sandbox/drift", json={**target, "skus": changed}, timeout=10
        )
        answer.raise_for_status()

        def refused() -> list[dict[str, object]]:
            return [r for r in v3_reads(sandbox, since) if r["status"] == status]

        wait_for(f"a read answered {status}", lambda: len(refused()) >= 2, 30)
        # Then the sweep stops at the refusal, as a v2 read's does: nothing taken for drift,
        # nothing made pending, sending not held (a read is not a push: it does not park) ...
        assert all(
            r["status"] == status for r in v3_reads(sandbox, str(refused()[0]["started_at"]))
        )
        assert drifts(engine, CAMPAIGN) == []
        assert pending_keys(engine) == 0
        assert business_parked(engine) is None
        assert f"event=verify_read_failed campaign={CAMPAIGN}" in log.read_text()
        assert f"HTTP {status}" in log.read_text()
        # ... and goes on by itself once the Market answers again
        sandbox.configure_v3(forced_status={})
        wait_for("the drift found", lambda: len(drifts(engine, CAMPAIGN)) >= 5, 40)
        wait_for("ours again at the Market", lambda: held(sandbox, WAREHOUSE) == ours, 30)
    assert {r.sku for r in drifts(engine, CAMPAIGN)} == set(changed)
    assert SECRET_KEY not in log.read_text()
