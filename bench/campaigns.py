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
import contextlib
import json
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from sqlalchemy import Engine, event, text

from bench import RESULTS
from bench.drain_throughput import fresh_services, pending, sandbox_process, worker
from worker.claims import Claim, Claims
from worker.drain_pass import run_pass
from worker.rate_limiter import RateLimiter

CAMPAIGNS = 1000
PENDING_PER_CAMPAIGN = 10
PASS_BUDGET_SECONDS = 2.0  # the default drain interval


def load(engine: Engine, idle_keys: int) -> None:
    """Idle keys acknowledged an hour ago, then 10 pending keys per campaign; no ANALYZE."""
    per_campaign = max(1, idle_keys // CAMPAIGNS)
    with engine.begin() as conn:
        # 10 M rows in one statement outlast the service sessions' statement timeout.
        conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, abs_count, version, acked_version, acked_value,
                                   acked_at, changed_at, last_occurred_at)
                SELECT g, 'idle-' || i, i, 1, 1, i, now() - interval '1 hour',
                       now() - interval '2 hours', now() - interval '2 hours'
                FROM generate_series(1, CAST(:campaigns AS bigint)) g,
                     generate_series(1, CAST(:keys AS int)) i
            """),
            {"campaigns": CAMPAIGNS, "keys": per_campaign},
        )
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, abs_count, version, changed_at, last_occurred_at)
                SELECT g, 'new-' || i, i, 1, now() - make_interval(secs => g),
                       now() - make_interval(secs => g)
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


def stock_scans(engine: Engine) -> dict[str, int]:
    """`stock`'s sequential scans and the rows they read so far (every backend's stats flushed:
    the engine's connections are closed first)."""
    engine.dispose()
    time.sleep(1.2)  # a backend's last stats reach the shared counters at its exit
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        row = conn.execute(
            text(
                "SELECT seq_scan, seq_tup_read, idx_tup_fetch FROM pg_stat_user_tables "
                "WHERE relname = 'stock'"
            )
        ).one()
    return {"seq_scan": row[0], "seq_tup_read": row[1], "idx_tup_fetch": row[2]}


def scanned_by(engine: Engine, work: Any) -> dict[str, int]:
    """What `work()` made PostgreSQL read of `stock`: sequential scans, rows by index."""
    before = stock_scans(engine)
    work()
    after = stock_scans(engine)
    return {k: after[k] - before[k] for k in before}


def pass_costs(engine: Engine, idle_keys: int) -> dict[str, Any]:
    """The passes of the module's docstring, each with its statements; the idle pass and the
    10-of-1,000 pass also with the plan assertion: no sequential scan of `stock` (10 M rows)."""
    result: dict[str, Any] = {"campaigns": CAMPAIGNS, "idle_keys": idle_keys}
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
    timed: dict[str, Any] = {}

    def idle() -> None:
        timed["idle"] = timed_pass(engine, box)

    scans = scanned_by(engine, idle)
    seconds, statements, _ = timed["idle"]
    result["idle_pass"] = {"ms": round(seconds * 1000, 1), "statements": statements, **scans}
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE stock SET abs_count = abs_count + 1, version = version + 1 "
                "WHERE group_id <= 10 AND sku LIKE 'new-%'"
            )
        )

    def ten() -> None:
        timed["ten"] = timed_pass(engine, box)

    scans = scanned_by(engine, ten)
    seconds, statements, claimed = timed["ten"]
    result["pass_10_of_1000_pending"] = {
        "ms": round(seconds * 1000, 1),
        "statements": statements,
        "campaigns_claimed": len({c.campaign_id for c in claimed}),
        **scans,
    }
    for name in ("idle_pass", "pass_10_of_1000_pending"):
        # The plan assertion: a pass never reads the idle keys.
        assert result[name]["seq_scan"] == 0, (name, result[name])
        assert result[name]["idx_tup_fetch"] < 10 * CAMPAIGNS, (name, result[name])
    acknowledge_all(engine)
    return result


def end_to_end(
    database_url: str, broker: str, engine: Engine, log: Path, **settings: str
) -> dict[str, Any]:
    """A worker with beat and the sandbox (both at the Market's default limits) on the loaded
    database: the 10 keys of each of the 1,000 campaigns turn pending in one commit; until all
    are acknowledged: each campaign's first request after its keys turned pending (the
    limiter's leave: `market_request.started_at`), the freshness (acknowledged - turned
    pending) and each worker process's peak RSS. `settings`: the worker's, e.g. verify_hours."""
    with sandbox_process() as market, worker(database_url, broker, market, log, **settings) as proc:
        with engine.begin() as conn:
            marked = conn.execute(
                text(
                    "UPDATE stock SET abs_count = abs_count + 1, version = version + 1, "
                    "changed_at = clock_timestamp(), last_occurred_at = clock_timestamp() "
                    "WHERE sku LIKE 'new-%' RETURNING now()"
                )
            ).first()
        assert marked is not None
        since = marked[0]
        peak: dict[int, float] = {}
        started = time.monotonic()
        while pending(engine) > 0 and time.monotonic() - started < 600:
            for p in _tree(proc.process.pid):  # type: ignore[union-attr]
                with contextlib.suppress(psutil.NoSuchProcess):
                    peak[p.pid] = max(peak.get(p.pid, 0.0), p.memory_info().rss / 2**20)
            time.sleep(0.5)
        seconds = time.monotonic() - started
        with engine.connect() as conn:
            fresh = [
                float(r[0])
                for r in conn.execute(
                    text(
                        "SELECT extract(epoch FROM acked_at - changed_at) FROM stock "
                        "WHERE sku LIKE 'new-%' AND acked_version = version"
                    )
                )
            ]
            firsts = [
                float(r[0])
                for r in conn.execute(
                    text("""
                        SELECT extract(epoch FROM min(started_at) - :since) FROM market_request
                        WHERE started_at >= :since GROUP BY campaign_id
                    """),
                    {"since": since},
                )
            ]
    return {
        "keys": len(fresh),
        "left_pending": pending(engine),
        "seconds": round(seconds, 1),
        "freshness_s": _quantiles(fresh),
        "first_request_s": _quantiles(firsts),
        "peak_rss_mb_per_process": sorted(round(v) for v in peak.values()),
    }


def _tree(pid: int) -> list[psutil.Process]:
    try:
        main = psutil.Process(pid)
        return [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"n": len(values)}
    q = statistics.quantiles(values, n=100)
    return {
        "n": len(values),
        "p50": round(q[49], 3),
        "p99": round(q[98], 3),
        "max": round(max(values), 3),
    }


REPRO_CAMPAIGNS = 301
REPRO_KEYS = 2623


def repro(log: Path, timeout: float = 600.0) -> dict[str, Any]:
    """Issue 10's reproduction: 301 campaigns, 2,623 keys sent by a producer through
    `stocks.submit` (one message per campaign), one worker with beat, RabbitMQ, PostgreSQL and
    the sandbox at its default limits: seconds from the first send until every key is delivered
    (or what was delivered by `timeout`)."""
    from celery import Celery

    per = [
        REPRO_KEYS // REPRO_CAMPAIGNS + (c < REPRO_KEYS % REPRO_CAMPAIGNS)
        for c in range(REPRO_CAMPAIGNS)
    ]
    with fresh_services() as (database_url, broker, engine), sandbox_process() as market:
        with worker(database_url, broker, market, log):
            producer = Celery(broker=broker)
            now = datetime.now(UTC).isoformat()
            started = time.monotonic()
            for c, keys in enumerate(per):
                changes = [
                    {"campaign_id": 1000 + c, "sku": f"R-{i}", "count": i, "occurred_at": now}
                    for i in range(keys)
                ]
                producer.send_task(
                    "stocks.submit", kwargs={"changes": changes}, queue="stocks.changes"
                )
            producer.close()
            delivered = 0
            while time.monotonic() - started < timeout:
                stats = requests.get(market + "/_sandbox/stats", timeout=10).json()
                delivered = stats["skus_accepted"]
                if delivered >= REPRO_KEYS and pending(engine) == 0:
                    break
                time.sleep(0.5)
            seconds = time.monotonic() - started
        stats = requests.get(market + "/_sandbox/stats", timeout=10).json()
    return {
        "campaigns": REPRO_CAMPAIGNS,
        "keys": REPRO_KEYS,
        "delivered": delivered,
        "seconds": round(seconds, 1),
        "requests": stats["requests"],
        "timed_out": delivered < REPRO_KEYS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "mode",
        nargs="?",
        default="passes",
        choices=["passes", "end-to-end", "repro"],
        help="passes: in-process pass costs; end-to-end: also a worker and the sandbox on the "
        "loaded database; repro: issue 10's 301-campaign reproduction",
    )
    parser.add_argument("--quick", action="store_true", help="100,000 idle keys instead of 10 M")
    parser.add_argument("--out", type=Path, help="folder for result.json and logs")
    parser.add_argument(
        "--no-verify", action="store_true", help="the worker without the verify sweep"
    )
    args = parser.parse_args()
    log_dir = args.out or RESULTS / f"campaigns-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.mode == "repro":
        result = repro(log_dir / "repro.log")
    else:
        settings = {"verify_hours": "0"} if args.no_verify else {}
        idle = 10_000_000 if not args.quick else 100_000
        result = run(idle, args.mode == "end-to-end", log_dir, **settings)
    (log_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def run(idle_keys: int, with_worker: bool, log_dir: Path, **settings: str) -> dict[str, Any]:
    """`pass_costs` on a fresh database and vhost, then (`with_worker`) `end_to_end` on it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with fresh_services() as (database_url, broker, engine):
        result = pass_costs(engine, idle_keys)
        if with_worker:
            result["end_to_end"] = end_to_end(
                database_url, broker, engine, log_dir / "end-to-end.log", **settings
            )
    return result


if __name__ == "__main__":
    main()
