"""The verify sweep of many acknowledged keys at the Market's read limit, and its effect on sending.

Run: .venv/bin/python -m bench.verify [--quick | --keys N]
`keys` acknowledged keys (1,000,000; --quick 50,000; or --keys N) are written straight into a
fresh database's outbox and, with the same counts, into a sandbox process (its `/_sandbox/drift`
control) that keeps the Market's read limit (100,000 offers a minute per campaign). One worker
with beat sweeps them with the whole limit as its share (`STOCKSYNC_VERIFY_READ_SHARE=1`) and a
period short enough that the limit, not the pace, decides: the time until every key was read
back is set against the ideal (keys / 100,000 a minute); the worker's peak RSS is sampled from
/proc every half second. Meanwhile a steady stream of changes (20 SKUs a second, new SKUs,
straight into the outbox) is sent; its freshness (stored -> accepted by the sandbox) is measured
during the sweep and, right after, in a run with the sweep off (`STOCKSYNC_VERIFY_HOURS=0`) over
the same keys for as long. A third run sweeps with no stream (the sweep alone). A run gives up
after twice the ideal plus a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, text

from bench import RESULTS
from bench.drain_throughput import fresh_services, pending, rss_mb, sandbox_process, worker
from domain.changes import Change
from worker.ingest import store_message

CAMPAIGN = 5
READ_LIMIT = 100_000  # the Market's offers returned a minute per campaign (v2)
STREAM_PER_SECOND = 20


def load_acknowledged(engine: Engine, market: str, keys: int) -> None:
    """`keys` acknowledged keys in the outbox, the same counts at the sandbox."""
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO stock (group_id, sku, abs_count, abs_at, abs_seq, delta_sum,
                               last_occurred_at, version, changed_at, acked_version,
                               acked_value, acked_at)
            SELECT :c, 'SKU-' || g, g % 1000, now(), g, 0, now(), 1, now(), 1, g % 1000, now()
            FROM generate_series(1, :n) AS g
            """),
            {"c": CAMPAIGN, "n": keys},
        )
        # The sweep walks the campaigns it knows (a push would have added the row).
        conn.execute(text("INSERT INTO campaign (campaign_id) VALUES (:c)"), {"c": CAMPAIGN})
    chunk = 50_000
    for start in range(1, keys + 1, chunk):
        skus = {f"SKU-{g}": g % 1000 for g in range(start, min(start + chunk, keys + 1))}
        answer = requests.post(
            f"{market}/_sandbox/drift", json={"campaign": CAMPAIGN, "skus": skus}, timeout=120
        )
        answer.raise_for_status()


def swept(engine: Engine) -> bool:
    """True once a round ended (every key of the round read back)."""
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT last_full_sweep_at IS NOT NULL FROM campaign WHERE campaign_id = :c"),
            {"c": CAMPAIGN},
        ).scalar()
    return bool(value)


def checked(engine: Engine) -> int:
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT keys_checked_total FROM campaign WHERE campaign_id = :c"),
            {"c": CAMPAIGN},
        ).scalar()
    return int(value or 0)


def stream(engine: Engine, stop: threading.Event, sent: dict[str, float]) -> None:
    """New SKUs at STREAM_PER_SECOND, in messages of 10, until `stop`."""
    start, n = time.time(), 0
    while not stop.is_set():
        due = start + n * 10 / STREAM_PER_SECOND
        if due > time.time():
            time.sleep(due - time.time())
        now_dt = datetime.now(UTC)
        skus = [f"F{n}-{i}" for i in range(10)]
        store_message(
            engine,
            uuid.uuid4().hex,
            [(i, Change(CAMPAIGN, s, None, 1, None, now_dt)) for i, s in enumerate(skus)],
            [],
            lambda c: c,
        )
        now = time.time()
        for s in skus:
            sent[s] = now
        n += 1


def lags(market: str, sent: dict[str, float]) -> dict[str, Any]:
    state = requests.get(f"{market}/_sandbox/state?campaign={CAMPAIGN}", timeout=300).json()
    skus = state["skus"]
    found = sorted(
        datetime.fromisoformat(skus[s]["accepted_at"]).timestamp() - t
        for s, t in sent.items()
        if s in skus
    )
    q = statistics.quantiles(found, n=100)
    return {
        "skus": len(found),
        "missing": len(sent) - len(found),
        "p50_s": round(q[49], 3),
        "p99_s": round(q[98], 3),
        "max_s": round(found[-1], 3),
    }


def run(
    keys: int, sweep: bool, seconds_cap: float, log_dir: Path, with_stream: bool = True
) -> dict[str, Any]:
    """One run over `keys` acknowledged keys: the sweep (or not), the stream (or not)."""
    settings = {
        # A period of half the ideal: the pace allows more than the limit, which decides.
        "verify_hours": f"{keys / READ_LIMIT / 60 / 2:.5f}" if sweep else "0",
        "verify_read_limit_per_minute": str(READ_LIMIT),
        "verify_read_share": "1",
        "verify_interval_seconds": "1",
        "rate_limit_skus_per_minute": "100000",
    }
    with fresh_services() as (db, broker, engine), sandbox_process() as market:
        load_acknowledged(engine, market, keys)
        sent: dict[str, float] = {}
        stop = threading.Event()
        name = ("sweep" if sweep else "no-sweep") + ("" if with_stream else "-alone")
        with worker(db, broker, market, log_dir / f"{name}.log", **settings) as proc:
            started = time.monotonic()
            feeder = threading.Thread(target=stream, args=(engine, stop, sent), daemon=True)
            if with_stream:
                feeder.start()
            peak, done_at = 0.0, None
            # With the sweep: until every key was read back; without: as long as that took.
            while time.monotonic() - started < seconds_cap:
                peak = max(peak, rss_mb(proc.process.pid))  # type: ignore[union-attr]
                if sweep and swept(engine):
                    done_at = time.monotonic()
                    break
                time.sleep(0.5)
            stop.set()
            if with_stream:
                feeder.join()
            wait_until = time.monotonic() + 60
            while pending(engine) > 0 and time.monotonic() < wait_until:
                time.sleep(0.5)
            reads = requests.get(f"{market}/_sandbox/reads", timeout=30).json()
        out: dict[str, Any] = {
            "keys": keys,
            "sweep": sweep,
            "peak_worker_mb": round(peak),
            "stream": with_stream,
            "freshness": lags(market, sent) if sent else None,
        }
        if sweep:
            took = None if done_at is None else done_at - started
            ideal = keys / READ_LIMIT * 60
            out.update(
                {
                    "checked": checked(engine),
                    "sweep_seconds": None if took is None else round(took, 1),
                    "ideal_seconds": round(ideal, 1),
                    "ratio_to_ideal": None if took is None else round(took / ideal, 2),
                    "read_stats": reads.get("campaigns", {}).get(str(CAMPAIGN)),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 keys, for a smoke run")
    parser.add_argument("--keys", type=int, default=None, help="this many keys instead")
    args = parser.parse_args()
    keys = args.keys or (50_000 if args.quick else 1_000_000)
    log_dir = RESULTS / f"verify-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    cap = keys / READ_LIMIT * 60 * 2 + 60
    out["with_sweep"] = run(keys, True, cap, log_dir)
    print(json.dumps(out["with_sweep"]), flush=True)
    took = out["with_sweep"]["sweep_seconds"] or cap
    out["without_sweep"] = run(keys, False, took, log_dir)
    print(json.dumps(out["without_sweep"]), flush=True)
    (log_dir / "result.json").write_text(json.dumps(out, indent=2))
    out["sweep_alone"] = run(keys, True, cap, log_dir, with_stream=False)
    print(json.dumps(out["sweep_alone"]), flush=True)
    (log_dir / "result.json").write_text(json.dumps(out, indent=2))
    print(f"results in {log_dir}")


if __name__ == "__main__":
    main()
