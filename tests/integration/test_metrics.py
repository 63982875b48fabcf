"""The Prometheus exposition over the real database: lint, monotonic counters, cheap scrapes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from sandbox.server import MarketSandbox
from tests.integration.drain_support import pending_keys, put_changes, running_worker
from tests.integration.metrics_support import counted_work, exposition, samples
from tests.services import wait_for
from worker.claims import Claims
from worker.housekeeping import fold_tallies, housekeeping
from worker.monitoring import _SCRAPE_CAMPAIGNS, SCRAPE_TIMEOUT_MS, read_scrape
from worker.rate_limiter import RateLimiter
from worker.settings import Settings, V3Target

ROOT = Path(__file__).resolve().parents[2]

COUNTER_SAMPLES = [
    ("stocksync_skus_pushed_total", (("campaign", "5"),)),
    ("stocksync_market_requests_total", (("campaign", "5"), ("status", "200"))),
    ("stocksync_market_requests_total", (("campaign", "5"), ("status", "420"))),
    ("stocksync_market_rate_limited_total", (("campaign", "5"),)),
    ("stocksync_rejected_changes_total", (("campaign", "5"),)),
    ("stocksync_unreadable_messages_total", ()),
    ("stocksync_market_request_duration_seconds_count", (("campaign", "5"),)),
    ("stocksync_market_request_duration_seconds_bucket", (("campaign", "5"), ("le", "+Inf"))),
]


def test_counted_work_is_exposed_as_counters_and_a_histogram(engine: Engine) -> None:
    counted_work(engine)

    found = samples(exposition(engine))

    assert [found[key] for key in COUNTER_SAMPLES] == [2, 1, 1, 1, 1, 1, 2, 2]
    assert found[("stocksync_market_request_duration_seconds_sum", (("campaign", "5"),))] >= 0
    assert found[("stocksync_pending_keys", (("campaign", "5"),))] == 0
    assert found[("stocksync_campaign_parked", (("campaign", "5"),))] == 0
    (build,) = [labels for name, labels in found if name == "stocksync_build_info"]
    assert dict(build)["version"] == "0.1.0"


def test_exposition_passes_promtool_check_metrics(engine: Engine) -> None:
    counted_work(engine)
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"

    result = subprocess.run(
        [promtool, "check", "metrics"],
        check=False,
        input=exposition(engine),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", "promtool lint findings"


def test_counters_do_not_fall_when_housekeeping_prunes_everything(engine: Engine) -> None:
    counted_work(engine)
    before = samples(exposition(engine))
    with engine.begin() as conn:  # the ledger ages past its two hours
        conn.execute(text("UPDATE market_request SET started_at = now() - interval '3 hours'"))

    housekeeping(engine, retention_days=0)

    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT (SELECT count(*) FROM rejected), (SELECT count(*) FROM market_request)")
        ).one()
    assert tuple(left) == (0, 0)  # the rows the old gauges counted are gone
    after = samples(exposition(engine))
    assert {k: after[k] for k in COUNTER_SAMPLES} == {k: before[k] for k in COUNTER_SAMPLES}
    counted_work(engine, tag="again")  # and they keep counting from there
    again = samples(exposition(engine))
    assert again[COUNTER_SAMPLES[0]] == 2 * before[COUNTER_SAMPLES[0]]


def test_a_redelivered_message_counts_its_rejections_once(engine: Engine) -> None:
    from domain.changes import Rejection
    from worker.ingest import store_message, store_unreadable

    for _ in range(2):
        store_message(engine, "same-task", [], [Rejection(0, {"campaign_id": 7}, "sku")], int)
        store_unreadable(engine, "same-unreadable", "x", "changes: must be a list")

    found = samples(exposition(engine))

    assert found[("stocksync_rejected_changes_total", (("campaign", "7"),))] == 1
    assert found[("stocksync_unreadable_messages_total", ())] == 1


@pytest.fixture
def many_pending_keys(engine: Engine) -> Engine:
    """200,000 pending keys in two campaigns (a third of them a day old), vacuumed."""
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO stock (group_id, sku, delta_sum, version, acked_version, changed_at)
            SELECT 100 + i % 2, 'S' || i, 1, 1, 0, now() - make_interval(secs => i % 3 * 43200)
            FROM generate_series(1, 200000) AS i
        """)
        )
        conn.execute(text("UPDATE stock SET parked_version = version WHERE sku LIKE 'S1%'"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE stock"))
    return engine


def test_a_scrape_of_200000_pending_keys_is_three_statements_under_its_timeout(
    many_pending_keys: Engine,
) -> None:
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(args[2])

    event.listen(many_pending_keys, "before_cursor_execute", count)
    started = time.monotonic()
    scrape = read_scrape(many_pending_keys, Settings())
    elapsed = time.monotonic() - started
    event.remove(many_pending_keys, "before_cursor_execute", count)

    assert [(c.campaign_id, c.pending_keys) for c in scrape.campaigns] == [
        (100, 100_000),
        (101, 100_000),
    ]
    assert scrape.campaigns[0].oldest_pending_age_seconds >= 86_400
    assert sum(c.held_skus for c in scrape.campaigns) == 111_111  # S1, S10…S19, S100…S199, …
    assert len(statements) == 3  # SET LOCAL statement_timeout, the campaigns, the counters
    assert statements[0].startswith("SET LOCAL statement_timeout")
    assert not any("rejected" in s or "market_request" in s for s in statements)
    assert elapsed < SCRAPE_TIMEOUT_MS / 1000
    with many_pending_keys.connect() as conn:
        plan = "\n".join(
            row[0]
            for row in conn.execute(text("EXPLAIN " + str(_SCRAPE_CAMPAIGNS)), {"configured": []})
        )
    assert "Seq Scan on stock " not in plan, plan  # (stock_tally is the tallies' few rows)
    assert "using stock_pending on stock" in plan, plan  # the oldest: one index entry


def test_a_scrape_slower_than_its_timeout_is_cancelled(many_pending_keys: Engine) -> None:
    with pytest.raises(OperationalError, match="statement timeout"):
        read_scrape(many_pending_keys, Settings(), timeout_ms=1)


def _truth(engine: Engine) -> dict[int, tuple[int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("""
            SELECT group_id, count(*) FILTER (WHERE version > acked_version),
                   count(*) FILTER (WHERE parked_version = version)
            FROM stock GROUP BY group_id
        """)
        ).all()
    return {int(g): (int(p), int(h)) for g, p, h in rows if p or h}


def _tallied(engine: Engine) -> dict[int, tuple[int, int]]:
    return {
        c.campaign_id: (c.pending_keys, c.held_skus)
        for c in read_scrape(engine, Settings()).campaigns
        if c.pending_keys or c.held_skus
    }


def test_tallies_follow_every_write_to_the_outbox_and_survive_folding(engine: Engine) -> None:
    put_changes(engine, [{"campaign_id": 5, "sku": f"K{i}", "count": i} for i in range(50)])
    put_changes(engine, [{"campaign_id": 1002, "sku": "K1", "delta": 1}], groups={1002: 5})
    counted_work(engine, campaign=6)  # ingest, claim, acknowledge
    limiter = RateLimiter(engine, 100_000, 4)
    box = Claims(engine, limiter, 60, 86400)
    (claim,) = box.claim(5, 60)
    batch = box.read(5, claim.claim_id)
    box.hold_skus(5, claim.claim_id, [(s, "400: refused") for s in batch[:3]])
    box.acknowledge(5, claim.claim_id, batch[3:10])
    with engine.begin() as conn:  # any other writer: a statement no Python code path knows
        acked_apart, deleted = {"s": batch[10].sku}, {"s": batch[11].sku}
        conn.execute(text("UPDATE stock SET acked_version = version WHERE sku = :s"), acked_apart)
        conn.execute(text("DELETE FROM stock WHERE sku = :s"), deleted)
    # 50 keys (K1 twice), 7 acknowledged, one acknowledged apart, one deleted; 3 held
    assert _truth(engine) == {5: (41, 3)}
    assert _tallied(engine) == _truth(engine)

    fold_tallies(engine)

    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM stock_tally")).scalar_one() == 1
    assert _tallied(engine) == {5: (41, 3)}
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE stock"))
    assert _tallied(engine) == {}


def test_tallies_follow_keys_carried_over_to_new_warehouse_groups(engine: Engine) -> None:
    from worker.routes import apply_routes

    put_changes(
        engine, [{"campaign_id": c, "sku": s, "count": 1} for c in (1001, 2001) for s in "AB"]
    )
    apply_routes(engine, [[1001], [2001]])
    apply_routes(engine, [[1001, 2001]])  # merged: 2001's keys move (or go) to 1001
    assert _tallied(engine) == _truth(engine) == {1001: (2, 0)}

    apply_routes(engine, [[1001]])  # 2001 leaves: its keys are copied back, pending

    assert _tallied(engine) == _truth(engine) == {1001: (2, 0), 2001: (2, 0)}


@pytest.mark.slow
def test_counters_are_exact_across_two_workers(
    engine: Engine, database_url: str, rabbit_url: str, sandbox: MarketSandbox, tmp_path: Path
) -> None:
    sandbox.configure(latency_ms=50)
    put_changes(engine, [{"campaign_id": 5, "sku": f"S{i}", "count": i} for i in range(6_000)])
    with (
        running_worker(database_url, rabbit_url, sandbox, tmp_path / "a.log"),
        running_worker(database_url, rabbit_url, sandbox, tmp_path / "b.log"),
    ):
        wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, 90)
    assert _tallied(engine) == _truth(engine) == {}
    stats = sandbox.stats()
    found = samples(exposition(engine))
    by_status = {
        dict(labels)["status"]: value
        for (name, labels), value in found.items()
        if name == "stocksync_market_requests_total"
    }
    assert found[("stocksync_skus_pushed_total", (("campaign", "5"),))] == 6_000
    assert stats["skus_accepted"] == 6_000
    assert by_status == {s: float(n) for s, n in stats["requests_by_status"].items()}
    assert (
        sum(by_status.values())
        == found[("stocksync_market_request_duration_seconds_count", (("campaign", "5"),))]
    )


def _exposed_names(text: str) -> set[str]:
    """The sample names an exposition's families can have, samples present or not."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes[family.type]
    }


def _flower_names() -> set[str]:
    """The metrics Flower defines (its own source: it serves them at /metrics)."""
    import flower.events

    source = Path(flower.events.__file__).read_text(encoding="utf-8")
    return set(re.findall(r"(?:Gauge|Counter|Histogram)\(\s*'(flower_\w+)'", source))


def test_the_dashboard_and_alerts_use_only_metrics_the_service_or_flower_exposes(
    engine: Engine,
) -> None:
    counted_work(engine)
    exposed = _exposed_names(exposition(engine))
    flower = _flower_names()
    assert "flower_worker_online" in flower
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "stocksync.json").read_text("utf-8"))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs.append(dashboard["templating"]["list"][0]["definition"])
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text("utf-8"))
    exprs += [rule["expr"] for group in alerts["groups"] for rule in group["rules"]]

    used = {name for expr in exprs for name in re.findall(r"\b((?:stocksync|flower)_\w+)", expr)}

    assert used - exposed - flower == set()
    assert len(used & exposed) >= 12


def test_each_campaigns_method_and_business_and_the_v3_limit_are_exposed(engine: Engine) -> None:
    put_changes(
        engine,
        [{"campaign_id": 5, "sku": "A", "count": 1}, {"campaign_id": 4001, "sku": "B", "count": 2}],
    )
    settings = Settings(
        v3_campaigns={4001: V3Target(business_id=901, warehouse_id=7001)},
        v3_requests_per_minute=40,
    )

    found = samples(exposition(engine, settings))

    methods = {
        labels: v for (name, labels), v in found.items() if name == "stocksync_campaign_method"
    }
    assert methods == {
        (("business", ""), ("campaign", "5"), ("method", "v2")): 1.0,
        (("business", "901"), ("campaign", "4001"), ("method", "v3")): 1.0,
    }
    assert found[("stocksync_v3_requests_per_minute", ())] == 40
