"""The metrics scrape against a large backlog: its time stays small and under its timeout.

Run: .venv/bin/python -m bench.metrics_scrape [--quick] [--keys N] [--campaigns N]
A fresh database gets N pending keys (1,000,000 by default) spread over the campaigns, a tenth of
them held, and the counter rows of a busy day; the scrape (`worker.metrics.StockFigures`, the
whole exposition) is timed right after the load and after a VACUUM, next to the status command's
full read (`worker.monitoring.read_figures`), which reads every pending key. Then what the tally
triggers cost the writers: 500-change messages through `worker.ingest.store_message` and their
acknowledgement (`Claims`), with the triggers on and off (ALTER TABLE ... DISABLE TRIGGER USER),
alternating, on the same loaded table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, text

from bench import RESULTS
from domain.changes import Change
from tests import services
from worker.claims import Claims
from worker.database import make_engine
from worker.ingest import store_message
from worker.metrics import StockFigures
from worker.monitoring import SCRAPE_TIMEOUT_MS, read_figures
from worker.rate_limiter import RateLimiter
from worker.settings import Settings

_LOAD = text("""
    INSERT INTO stock (group_id, sku, delta_sum, version, acked_version, changed_at,
                       parked_version)
    SELECT 1000 + i % :campaigns, 'SKU-' || i, 1, 2, 1,
           now() - make_interval(secs => i % 3600),
           CASE WHEN i % 10 = 0 THEN 2 END
    FROM generate_series(1, :keys) AS i
""")

_COUNTERS = text("""
    INSERT INTO counter (name, campaign_id, label, value)
    SELECT n, 1000 + c, l, 1000
    FROM generate_series(0, :campaigns - 1) AS c,
         unnest(ARRAY['market_requests', 'market_requests', 'market_requests', 'skus_pushed',
                      'market_request_duration_seconds_bucket'],
                ARRAY['200', '420', '500', '', '0.25']) AS x(n, l)
""")


def timed(what: Callable[[], object], runs: int) -> list[float]:
    """Seconds of each run."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        what()
        seconds.append(time.perf_counter() - started)
    return seconds


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, min and max in milliseconds."""
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "min_ms": round(min(seconds) * 1000, 1),
        "max_ms": round(max(seconds) * 1000, 1),
    }


def scrape(engine: Engine) -> Callable[[], object]:
    """One whole exposition, as a Prometheus scrape gets it."""
    registry = CollectorRegistry()
    registry.register(StockFigures(engine, Settings()))
    return lambda: generate_latest(registry)


def write_cost(engine: Engine, rounds: int) -> dict[str, dict[str, float]]:
    """Seconds per 500-change message and per 500-key acknowledgement, triggers on and off."""
    box = Claims(engine, RateLimiter(engine, 10**9, 100), 60, 86400)
    times: dict[str, dict[str, list[float]]] = {
        mode: {"ingest": [], "acknowledge": []} for mode in ("on", "off")
    }
    for i in range(rounds):
        for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
            with engine.begin() as conn:
                conn.execute(
                    text(
                        f"ALTER TABLE stock {'ENABLE' if mode == 'on' else 'DISABLE'} TRIGGER USER"
                    )
                )
            campaign = 5000 + i * 2 + (mode == "on")
            now = datetime.now(UTC)
            batch = [(j, Change(campaign, f"W-{j}", None, j, None, now)) for j in range(500)]
            started = time.perf_counter()
            store_message(engine, uuid.uuid4().hex, batch, [], lambda c: c)
            times[mode]["ingest"].append(time.perf_counter() - started)
            (claim, *_) = box.claim(campaign, 60)
            sent = box.read(campaign, claim.claim_id)
            started = time.perf_counter()
            box.acknowledge(campaign, claim.claim_id, sent)
            times[mode]["acknowledge"].append(time.perf_counter() - started)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE stock ENABLE TRIGGER USER"))
    return {
        f"{what}_triggers_{mode}": summary(seconds)
        for mode, by_what in times.items()
        for what, seconds in by_what.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 scrapes each instead of 20")
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--campaigns", type=int, default=10)
    args = parser.parse_args()
    runs = 5 if args.quick else 20
    template = services.create_migrated_template()
    engine = make_engine(services.url_for_database(template))
    result: dict[str, object] = {
        "keys": args.keys,
        "campaigns": args.campaigns,
        "runs": runs,
        "timeout_ms": SCRAPE_TIMEOUT_MS,
    }
    try:
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(_LOAD, {"keys": args.keys, "campaigns": args.campaigns})
            conn.execute(_COUNTERS, {"campaigns": args.campaigns})
        result["load_s"] = round(time.perf_counter() - started, 1)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE stock"))
        result["scrape_before_vacuum"] = summary(timed(scrape(engine), runs))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE stock"))
        result["scrape_after_vacuum"] = summary(timed(scrape(engine), runs))
        result["status_read_figures"] = summary(
            timed(lambda: read_figures(engine, Settings()), max(2, runs // 4))
        )
        result["writes"] = write_cost(engine, 10 if args.quick else 40)
        print(json.dumps(result, indent=2), flush=True)
    finally:
        engine.dispose()
        services.drop_database(template)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"metrics-scrape-{uuid.uuid4().hex[:6]}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
