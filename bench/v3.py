"""The v3 backlog benchmark: items over 5 warehouses of one business, sent by v3.

Delivery time ÷ the ideal (items ÷ (requests a minute * 2,000) minutes; 100,000 a minute at the
Market's 50), 420s, mean items per request. Full: 300,000 items (goal ≤ 1.05, zero 420s, mean ≥
1,990). `--quick`: 12,000 items, too few to fill a minute: its ratio shows the overhead only.
`--reroute`: the move of the items' campaigns into v3 alone (worker/routes.py), all keys pending,
then back to v2 with all keys acknowledged (every key bumped: the dearest move).

`--shape`: `run` (default) is `stocksync run` as a seller starts it, an ingest worker, a push
worker and beat, each a process; `embedded` one worker with embedded beat (the earlier runs'
shape); `both` runs them one after the other, each on a fresh database and sandbox.

    python -m bench.v3 --quick
    python -m bench.v3 --shape both
    python -m bench.v3 --reroute
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import text

from bench import RESULTS
from bench.drain_throughput import fresh_services, pending, stocksync_run, worker
from sandbox.server import MarketSandbox
from tests.integration.drain_support import load_pending
from worker.routes import apply_routes

BUSINESS = 901
CAMPAIGNS = {5001 + i: 8001 + i for i in range(5)}


SHAPES = ("run", "embedded")


def _seconds(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def timeline(requests: list[dict[str, Any]], started: float, per_minute: int) -> dict[str, Any]:
    """Where the time went, from the sandbox's request log (its monotonic clock is this
    process's): the first request after the start, each window's span, the gap between a request
    and the one `per_minute` later, request durations."""
    starts = [r["started_monotonic"] - started for r in requests]
    ends = [r["ended_monotonic"] - started for r in requests]
    windows = [
        [round(starts[i], 1), round(max(ends[i : i + per_minute]), 1)]
        for i in range(0, len(starts), per_minute)
    ]
    gaps = [starts[i + per_minute] - starts[i] for i in range(len(starts) - per_minute)]
    return {
        "first_request_s": round(starts[0], 1) if starts else None,
        "last_answer_s": round(max(ends), 1) if ends else None,
        "windows_s": windows,
        "gap_to_next_window_median_s": _seconds(gaps),
        "gap_to_next_window_max_s": round(max(gaps), 3) if gaps else None,
        "request_median_s": _seconds([e - s for s, e in zip(starts, ends, strict=True)]),
        "request_max_s": round(max(e - s for s, e in zip(starts, ends, strict=True)), 3)
        if starts
        else None,
    }


def backlog(items: int, shape: str, per_minute: int) -> dict[str, Any]:
    """One full delivery of `items` in `shape`: `run` (`stocksync run`, its own defaults: push
    pool STOCKSYNC_PUSH_CONCURRENCY) or `embedded` (one `celery worker -B` with Celery's default
    pool, drains every 0.5 s: the shape of the earlier runs)."""
    accounts = {
        "businesses": [
            {
                "id": BUSINESS,
                "campaigns": [{"id": c, "warehouses": [{"id": w}]} for c, w in CAMPAIGNS.items()],
            }
        ]
    }
    v3 = {str(c): {"business_id": BUSINESS, "warehouse_id": w} for c, w in CAMPAIGNS.items()}
    log = RESULTS / f"v3-{shape}.log"
    settings = {"v3_campaigns": json.dumps(v3), "v3_requests_per_minute": str(per_minute)}
    with (
        fresh_services() as (database_url, broker, engine),
        MarketSandbox(port=0, accounts=accounts) as sandbox,
    ):
        for n, campaign in enumerate(CAMPAIGNS):
            share = items // len(CAMPAIGNS) + (n < items % len(CAMPAIGNS))
            load_pending(engine, campaign, share, "V3-")
        with engine.begin() as conn:
            conn.execute(text("ANALYZE stock"))
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        service: AbstractContextManager[object]
        if shape == "run":
            log.unlink(missing_ok=True)
            service = stocksync_run(
                database_url,
                broker,
                sandbox.url,
                log,
                data_dir=log.with_suffix(".data"),
                wait_ready=False,  # the clock runs from before the start
                settings=settings,
            )
        else:
            service = worker(
                database_url, broker, sandbox.url, log, drain_interval_seconds="0.5", **settings
            )
        with service:
            while pending(engine):
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            load_after = os.getloadavg()[0]
        stats = sandbox.v3_stats()["businesses"][str(BUSINESS)]
        requests = sandbox.v3_requests(BUSINESS)
    ideal = items / (per_minute * 2000) * 60
    return {
        "shape": shape,
        "items": items,
        "warehouses": len(CAMPAIGNS),
        "seconds": round(elapsed, 1),
        "ideal_seconds": round(ideal, 1),
        "ratio": round(elapsed / ideal, 3),
        "requests": stats["requests"],
        "rate_limited_420": stats["rate_limited"] + stats["parallel_limited"],
        "mean_items_per_request": round(stats["items_accepted"] / max(1, stats["requests"]), 1),
        "max_requests_in_window": stats["max_requests_in_window"],
        "load_average_1m": [load_before, load_after],
        **timeline(requests, started, per_minute),
    }


def main() -> None:
    """Runs the benchmark and prints (and stores) its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--items", type=int)
    parser.add_argument("--reroute", action="store_true")
    parser.add_argument(
        "--shape",
        choices=(*SHAPES, "both"),
        default="run",
        help="run: `stocksync run` (default); embedded: one worker with -B; both, one after the "
        "other",
    )
    args = parser.parse_args()
    items = args.items or (12_000 if args.quick else 300_000)
    if args.reroute:
        reroute(items)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    shapes = SHAPES if args.shape == "both" else (args.shape,)
    results = [backlog(items, shape, 50) for shape in shapes]
    (RESULTS / "v3.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


def reroute(items: int) -> None:
    """Times `apply_routes` moving the campaigns into v3 (every key pending), then back to v2
    (every key acknowledged)."""
    v3 = {c: (BUSINESS, w) for c, w in CAMPAIGNS.items()}
    with fresh_services() as (_, _broker, engine):
        for n, campaign in enumerate(CAMPAIGNS):
            share = items // len(CAMPAIGNS) + (n < items % len(CAMPAIGNS))
            load_pending(engine, campaign, share, "V3-")
        with engine.begin() as conn:
            conn.execute(text("ANALYZE stock"))
        started = time.monotonic()
        apply_routes(engine, [], v3)
        into_v3 = time.monotonic() - started
        with engine.begin() as conn:
            conn.execute(text("UPDATE stock SET acked_version = version"))
            conn.execute(text("ANALYZE stock"))
        started = time.monotonic()
        apply_routes(engine, [], {})
        back_to_v2 = time.monotonic() - started
        bumped = pending(engine)
    result = {
        "items": items,
        "into_v3_all_pending_seconds": round(into_v3, 3),
        "back_to_v2_all_acknowledged_seconds": round(back_to_v2, 3),
        "pending_after_back_to_v2": bumped,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
