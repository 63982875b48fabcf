"""The v3 backlog benchmark: items over 5 warehouses of one business, sent by v3.

Delivery time ÷ the ideal (items ÷ (requests a minute * 2,000) minutes; 100,000 a minute at the
Market's 50), 420s, mean items per request. Full: 300,000 items (goal ≤ 1.05, zero 420s, mean ≥
1,990). `--quick`: 12,000 items, too few to fill a minute: its ratio shows the overhead only.

    python -m bench.v3 --quick
"""

from __future__ import annotations

import argparse
import json
import time

from bench import RESULTS
from bench.drain_throughput import fresh_services, pending, worker
from sandbox.server import MarketSandbox
from tests.integration.drain_support import load_pending

BUSINESS = 901
CAMPAIGNS = {5001 + i: 8001 + i for i in range(5)}


def main() -> None:
    """Runs the benchmark and prints (and stores) its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--items", type=int)
    args = parser.parse_args()
    items = args.items or (12_000 if args.quick else 300_000)
    per_minute = 50
    accounts = {
        "businesses": [
            {
                "id": BUSINESS,
                "campaigns": [{"id": c, "warehouses": [{"id": w}]} for c, w in CAMPAIGNS.items()],
            }
        ]
    }
    v3 = {str(c): {"business_id": BUSINESS, "warehouse_id": w} for c, w in CAMPAIGNS.items()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (
        fresh_services() as (database_url, broker, engine),
        MarketSandbox(port=0, accounts=accounts) as sandbox,
    ):
        for n, campaign in enumerate(CAMPAIGNS):
            share = items // len(CAMPAIGNS) + (n < items % len(CAMPAIGNS))
            load_pending(engine, campaign, share, "V3-")
        started = time.monotonic()
        with worker(
            database_url,
            broker,
            sandbox.url,
            RESULTS / "v3-worker.log",
            v3_campaigns=json.dumps(v3),
            v3_requests_per_minute=str(per_minute),
            drain_interval_seconds="0.5",
        ):
            while pending(engine):
                time.sleep(0.2)
            elapsed = time.monotonic() - started
        stats = sandbox.v3_stats()["businesses"][str(BUSINESS)]
    ideal = items / (per_minute * 2000) * 60
    result = {
        "items": items,
        "warehouses": len(CAMPAIGNS),
        "seconds": round(elapsed, 1),
        "ideal_seconds": round(ideal, 1),
        "ratio": round(elapsed / ideal, 3),
        "requests": stats["requests"],
        "rate_limited_420": stats["rate_limited"] + stats["parallel_limited"],
        "mean_items_per_request": round(stats["items_accepted"] / max(1, stats["requests"]), 1),
        "max_requests_in_window": stats["max_requests_in_window"],
    }
    (RESULTS / "v3.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
