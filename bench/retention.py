"""Retention under a long steady run: tables and the drain's cost stay bounded over a day.

Run: .venv/bin/python -m bench.retention [--quick]
A simulated day of changes (hourly inventory counts for a tenth of the changes, deltas for the
rest) goes through the real ingest (`worker.ingest.store_message`) into a fresh database. After
each simulated hour the hour's rows get their simulated receive time, the history is pruned with
a 6-hour retention (`worker.housekeeping.prune`), a plain VACUUM stands in for an hour of
autovacuum, and one drain cycle is timed (`Claims.claim` of a 2,000-key batch, then its
acknowledgement) with the Market left out: the drain's own database cost is what could grow.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from bench import RESULTS
from domain.changes import Change
from tests import services
from worker.claims import Claims
from worker.database import make_engine
from worker.housekeeping import prune
from worker.ingest import store_message
from worker.rate_limiter import RateLimiter

CAMPAIGN = 5
RETENTION_DAYS = 0.25  # six simulated hours
DAY_START = datetime(2026, 11, 28, tzinfo=UTC)


def one_hour(engine: Engine, rng: random.Random, hour: int, keys: int, changes: int) -> None:
    """An hour of changes in messages of 500: deltas everywhere, counts for a tenth of the keys."""
    start = DAY_START + timedelta(hours=hour)
    batch: list[tuple[int, Change]] = []
    for i in range(changes):
        sku = f"SKU-{rng.randrange(keys)}"
        at = start + timedelta(seconds=rng.uniform(0, 3600))
        is_count = rng.random() < 0.1
        change = Change(
            CAMPAIGN,
            sku,
            None if is_count else rng.randint(-3, 3),
            rng.randint(0, 500) if is_count else None,
            f"h{hour}-{i}",
            at,
        )
        batch.append((len(batch), change))
        if len(batch) == 500:
            store_message(engine, uuid.uuid4().hex, batch, [], lambda c: c)
            batch = []
    if batch:
        store_message(engine, uuid.uuid4().hex, batch, [], lambda c: c)


def drain_cycle_ms(engine: Engine, box: Claims) -> float:
    """One claim of a 2,000-key batch and its acknowledgement, in milliseconds."""
    started = time.perf_counter()
    claims = box.claim(CAMPAIGN, 60)
    for claim in claims[:1]:
        box.acknowledge(CAMPAIGN, claim.claim_id, box.read(CAMPAIGN, claim.claim_id))
    elapsed = (time.perf_counter() - started) * 1000
    for claim in claims:
        box.release(CAMPAIGN, claim.claim_id)
    return elapsed


def sizes(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()
        log_mb = conn.execute(text("SELECT pg_total_relation_size('change_log')")).scalar_one()
        stock_mb = conn.execute(text("SELECT pg_total_relation_size('stock')")).scalar_one()
    return {
        "change_log_rows": rows,
        "change_log_mb": round(log_mb / 2**20, 1),
        "stock_mb": round(stock_mb / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    keys, per_hour = (5_000, 20_000) if args.quick else (20_000, 100_000)
    rng = random.Random(7)
    template = services.create_migrated_template()
    engine = make_engine(services.url_for_database(template))
    box = Claims(engine, RateLimiter(engine, 10**9, 4), 60, 20 * 3600)
    hours: list[dict[str, Any]] = []
    try:
        for hour in range(24):
            with engine.connect() as conn:
                last_seq = conn.execute(
                    text("SELECT COALESCE(max(seq), 0) FROM change_log")
                ).scalar()
            t0 = time.perf_counter()
            one_hour(engine, rng, hour, keys, per_hour)
            ingest_s = time.perf_counter() - t0
            received = DAY_START + timedelta(hours=hour)
            with engine.begin() as conn:  # this hour's changes were received in simulated time
                conn.execute(
                    text("UPDATE change_log SET received_at = :at WHERE seq > :seq"),
                    {"at": received, "seq": last_seq},
                )
            pruned = prune(engine, RETENTION_DAYS, now=received + timedelta(hours=1))
            # A real hour holds dozens of autovacuum rounds (naptime 1 min); the simulated one
            # lasts seconds, so one plain VACUUM stands in for them.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM (ANALYZE) change_log, stock, claimed_key"))
            cycle = statistics.median(drain_cycle_ms(engine, box) for _ in range(3))
            with engine.begin() as conn:  # what the drain would have sent is acknowledged
                conn.execute(
                    text("UPDATE stock SET acked_version = version WHERE version > acked_version")
                )
            row = {
                "hour": hour,
                "changes": (hour + 1) * per_hour,
                "pruned": pruned.changes,
                "drain_cycle_ms": round(cycle, 1),
                "ingest_per_s": round(per_hour / ingest_s),
                **sizes(engine),
            }
            hours.append(row)
            print(json.dumps(row), flush=True)
    finally:
        engine.dispose()
        services.drop_database(template)
    out = RESULTS / f"retention-{uuid.uuid4().hex[:6]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(hours, indent=2))
    print(f"results in {out}")


if __name__ == "__main__":
    main()
