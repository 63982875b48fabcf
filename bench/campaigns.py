"""Many campaigns: what a drain pass costs with 1,000 campaigns, few of them with work.

Run: .venv/bin/python -m bench.campaigns [--quick]
A fresh database gets 1,000 campaigns with 10 pending keys each plus idle (acknowledged) keys
spread over them (10 M in the full run, 100,000 with --quick), loaded in bulk and not analyzed
(the state right after a load). Timed with the Market left out (`worker.drain_pass.run_pass`
with claims collected, not pushed): the first pass over the 1,000 backlogged campaigns, the
number of passes until every campaign had its first batch, then, with every key acknowledged, a
pass over 1,000 idle campaigns and one over 1,000 campaigns of which 10 have pending keys. Each
pass also counts its database statements. Not measured here: the limiter's p99 wait and the
freshness p99, which need a worker and the sandbox end to end.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from sqlalchemy import Engine, event, text

from bench import RESULTS
from tests import services
from worker.claims import Claim, Claims
from worker.database import make_engine
from worker.drain_pass import run_pass
from worker.rate_limiter import RateLimiter
from worker.settings import Settings

CAMPAIGNS = 1000
PENDING_PER_CAMPAIGN = 10
PASS_BUDGET_SECONDS = 2.0  # the default drain interval


def load(engine: Engine, idle_keys: int) -> None:
    """Idle keys acknowledged an hour ago, then 10 pending keys per campaign; no ANALYZE."""
    per_campaign = max(1, idle_keys // CAMPAIGNS)
    with engine.begin() as conn:
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, abs_count, version, acked_version, acked_value,
                                   acked_at, changed_at)
                SELECT g, 'idle-' || i, i, 1, 1, i, now() - interval '1 hour',
                       now() - interval '2 hours'
                FROM generate_series(1, CAST(:campaigns AS bigint)) g,
                     generate_series(1, CAST(:keys AS int)) i
            """),
            {"campaigns": CAMPAIGNS, "keys": per_campaign},
        )
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, abs_count, version, changed_at)
                SELECT g, 'new-' || i, i, 1, now() - make_interval(secs => g)
                FROM generate_series(1, CAST(:campaigns AS bigint)) g,
                     generate_series(1, CAST(:keys AS int)) i
            """),
            {"campaigns": CAMPAIGNS, "keys": PENDING_PER_CAMPAIGN},
        )


def timed_pass(engine: Engine, box: Claims) -> tuple[float, int, list[Claim]]:
    """One pass: seconds, statements and the claims it made."""
    statements = 0

    def count(*_args: Any) -> None:
        nonlocal statements
        statements += 1

    claimed: list[Claim] = []
    event.listen(engine, "before_cursor_execute", count)
    started = time.perf_counter()
    try:
        run_pass(box, 60.0, PASS_BUDGET_SECONDS, claimed.extend)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return time.perf_counter() - started, statements, claimed


def acknowledge_all(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM claimed_key"))
        conn.execute(text("DELETE FROM push_claim"))
        conn.execute(
            text("""
                UPDATE stock SET acked_version = version, acked_value = value,
                                 acked_at = clock_timestamp()
                WHERE version > acked_version
            """)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100,000 idle keys instead of 10 M")
    args = parser.parse_args()
    idle_keys = 100_000 if args.quick else 10_000_000
    database = services.create_migrated_template()
    engine = make_engine(services.url_for_database(database), Settings())
    result: dict[str, Any] = {"campaigns": CAMPAIGNS, "idle_keys": idle_keys}
    try:
        started = time.perf_counter()
        load(engine, idle_keys)
        result["load_s"] = round(time.perf_counter() - started, 1)
        box = Claims(engine, RateLimiter(engine, 100_000, max_parallel=2), 60.0, 20 * 3600.0)
        served: set[int] = set()
        passes: list[dict[str, Any]] = []
        while len(served) < CAMPAIGNS and len(passes) < 10:
            seconds, statements, claimed = timed_pass(engine, box)
            served |= {c.campaign_id for c in claimed}
            passes.append({"s": round(seconds, 3), "statements": statements, "served": len(served)})
        result["backlogged_passes"] = passes
        acknowledge_all(engine)
        seconds, statements, _ = timed_pass(engine, box)
        result["idle_pass"] = {"ms": round(seconds * 1000, 1), "statements": statements}
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE stock SET abs_count = abs_count + 1, version = version + 1 "
                    "WHERE group_id <= 10 AND sku LIKE 'new-%'"
                )
            )
        seconds, statements, claimed = timed_pass(engine, box)
        result["pass_10_of_1000_pending"] = {
            "ms": round(seconds * 1000, 1),
            "statements": statements,
            "campaigns_claimed": len({c.campaign_id for c in claimed}),
        }
    finally:
        engine.dispose()
        services.drop_database(database)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"campaigns-{uuid.uuid4().hex[:6]}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
