"""Against the naive way: stocksync and two naive designs, same workload, same sandbox, same faults.

Run: .venv/bin/python -m bench.naive [--quick] [--runs N] [--only SYSTEM ...] [--naive-a-threads N]

Full: 15,000 changes due at 250/s (60 s) over 3,000 SKUs, stopped 60 s after the stream's end.
--quick: the same rates for 20 s (5,000 changes over 1,000 SKUs), stopped 30 s after its end.
Opt-in system `naive-b-nolimit`: naive B without rate_limit. --grace lets the naive ways finish.

- stocksync: a producer `send_task("stocks.submit")` every 0.1 s with the changes due, one
  worker with embedded beat (`celery -A worker worker -B`), fresh database and vhost.
- naive-a: the producer PUTs each change itself (bench/naive/producer.py): 4 threads, one SKU per
  request, values kept in a dict, 3 tries on 5xx and broken connections, no rate limiting.
- naive-b: a Celery task per change (bench/naive/tasks.py, `celery -A bench.naive.tasks worker`,
  default concurrency and early acks): a PostgreSQL upsert, one PUT, rate_limit = the Market's
  limit per minute, autoretry_for=RequestException, retry_backoff, max_retries=3.

The workload (bench/naive/workload.py) is one seeded stream of deltas and counts, with duplicates
and late (out-of-order) changes, over K SKUs of 2 campaigns, due at a steady rate. Each system
gets a fresh sandbox process with the real limit rule at a scaled rate (6,000 SKUs per campaign
per rolling minute; stocksync's STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE and naive B's rate_limit are
set to the same figure) and the same seeded faults: 5 % injected 500, 2 % connections dropped
before and 2 % after applying, 10 … 30 ms latency. A run ends when the sandbox holds the expected
state (after the stream's end), when a naive system has handled every change, or at the stream's
length plus a grace time. The three systems run one after the other; with several runs the order
rotates.

Full: about 6 minutes per run (--runs N repeats it). --quick: about 2.5 minutes.
Results: bench/results/naive-*.json, and the logs in bench/results/naive-*/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import RESULTS
from bench.naive.systems import Setup, run_naive_a, run_naive_b, run_stocksync
from bench.naive.workload import Workload, generate

SYSTEMS: dict[str, Callable[[Workload, Setup], dict[str, Any]]] = {
    "stocksync": run_stocksync,
    "naive-a": run_naive_a,
    "naive-b": run_naive_b,
    # Opt-in (--only): naive B without Celery's rate_limit, to separate its cost from the rest.
    "naive-b-nolimit": lambda workload, setup: run_naive_b(workload, setup, rate_limited=False),
}
DEFAULT_SYSTEMS = ["stocksync", "naive-a", "naive-b"]
PROFILES: dict[str, dict[str, Any]] = {
    # 15,000 changes at 250/s over 3,000 SKUs; the limit is 6,000 SKUs per campaign per minute.
    "full": {"changes": 15_000, "keys": 3_000, "rate": 250.0, "limit": 6_000, "grace": 60.0},
    # The same rates for 20 s, over 1,000 SKUs.
    "quick": {"changes": 5_000, "keys": 1_000, "rate": 250.0, "limit": 6_000, "grace": 30.0},
}
FAULTS = {
    "error_500_rate": 0.05,
    "drop_before_rate": 0.02,
    "drop_after_rate": 0.02,
    "latency_ms": 10.0,
    "latency_jitter_ms": 20.0,
}
COLUMNS = (
    ("outcome", "outcome"),
    ("handled", "changes handled"),
    ("elapsed_s", "elapsed s"),
    ("changes_per_min", "changes/min"),
    ("requests", "Market requests"),
    ("skus_accepted", "SKUs accepted"),
    ("r420", "420s provoked"),
    ("lost_keys", "keys wrong at the end"),
    ("stale_overwrites", "stale overwrites"),
)
NUMERIC = [key for key, _ in COLUMNS if key != "outcome"]


def one_run(
    number: int, systems: list[str], profile: dict[str, Any], log_dir: Path, threads: int
) -> dict[str, Any]:
    """The chosen systems, one after the other, on one workload; the order rotates by run."""
    seed = 1000 + number
    workload = generate(
        changes=profile["changes"], keys=profile["keys"], rate=profile["rate"], seed=seed
    )
    setup = Setup(
        limit=profile["limit"],
        faults={**FAULTS},
        grace=profile["grace"],
        seed=seed,
        log_dir=log_dir,
        naive_threads=threads,
    )
    order = systems[number % len(systems) :] + systems[: number % len(systems)]
    results: dict[str, Any] = {"run": number, "order": order, "workload": workload.describe()}
    for name in order:
        started, load = time.monotonic(), os.getloadavg()[0]
        print(f"run {number + 1}: {name} …", flush=True)
        try:
            result = SYSTEMS[name](workload, setup)
        except Exception as exc:  # one system's failure must not lose the others' figures
            result = {"outcome": "error", "error": repr(exc), **dict.fromkeys(NUMERIC)}
        result["wall_s"] = round(time.monotonic() - started, 1)
        result["load_avg_1m_start"] = round(load, 2)
        results[name] = result
        print(f"  {json.dumps({k: result.get(k) for k in ('outcome', *NUMERIC)})}", flush=True)
    return results


def summary(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, Any]:
    """Per system and figure: the single value, or with ≥ 2 runs the median, min and max."""
    out: dict[str, Any] = {}
    for name in systems:
        figures: dict[str, Any] = {
            "outcomes": [run[name]["outcome"] for run in runs],
        }
        for key in NUMERIC:
            values = [run[name][key] for run in runs if run[name][key] is not None]
            if values:
                figures[key] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                }
        out[name] = figures
    return out


def _cell(figure: dict[str, Any] | None, runs: int) -> str:
    if figure is None:
        return "—"
    median = figure["median"]
    text = f"{median:,.0f}" if isinstance(median, int) or median >= 100 else f"{median:,.1f}"
    if runs >= 3 and figure["min"] != figure["max"]:
        text += f" ({figure['min']:,} … {figure['max']:,})"
    return text


def table(summed: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per system (medians and spread when there are ≥ 3 runs)."""
    keys = runs[0]["workload"]["keys"]
    header = ["system", *[title for _, title in COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, figures in summed.items():
        outcomes = ", ".join(sorted(set(figures["outcomes"])))
        cells = [name, outcomes]
        for key in NUMERIC:
            cell = _cell(figures.get(key), len(runs))
            total = {"lost_keys": keys, "handled": runs[0]["workload"]["changes"]}.get(key)
            cells.append(f"{cell} of {total:,}" if total else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.naive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a 20 s stream: about 2.5 minutes")
    parser.add_argument("--runs", type=int, default=1, help="rounds of all systems (default 1)")
    parser.add_argument("--grace", type=float, help="seconds after the stream's end before a stop")
    parser.add_argument("--naive-a-threads", type=int, default=4, help="naive A's threads (4)")
    parser.add_argument("--only", nargs="+", choices=list(SYSTEMS), default=DEFAULT_SYSTEMS)
    args = parser.parse_args()
    profile_name = "quick" if args.quick else "full"
    profile = dict(PROFILES[profile_name])
    if args.grace is not None:
        profile["grace"] = args.grace
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    log_dir = RESULTS / f"naive-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"profile {profile_name}: {profile}; faults {FAULTS}; logs in {log_dir}", flush=True)
    runs = [
        one_run(number, args.only, profile, log_dir, args.naive_a_threads)
        for number in range(args.runs)
    ]
    summed = summary(runs, args.only)
    result = {
        "started": stamp,
        "profile": profile_name,
        "settings": {**profile, "naive_a_threads": args.naive_a_threads},
        "faults": FAULTS,
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg(),
        },
        "runs": runs,
        "summary": summed,
    }
    path = RESULTS / f"naive-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print()
    print(table(summed, runs))
    print(f"\nresults in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
