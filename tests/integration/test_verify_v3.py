"""The verify sweep of v3 campaigns (CONTRACT 3b): a real worker with beat, PostgreSQL, RabbitMQ
and the sandbox over HTTP, reading back with `POST /v3/businesses/{id}/offers/stocks`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import Engine

from sandbox.server import MarketSandbox
from tests.integration.drain_support import SECRET_KEY, pending_keys, put_changes, running_worker
from tests.integration.test_v3_sending import ACCOUNTS, BUSINESS, V3, held
from tests.integration.test_verify import FAST, drifts, one
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
