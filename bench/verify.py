"""The verify sweep of many acknowledged keys at the Market's read limit, and its effect on sending.

Run: .venv/bin/python -m bench.verify [--keys N | --quick] [--shape run|one-worker]
         [--pairs P] [--phase-seconds S]

`keys` acknowledged keys (default 300,000; --quick 30,000) are written straight into a fresh
database's outbox and, with the same counts, into a sandbox process (its `/_sandbox/drift`
control) that keeps the Market's read limit (100,000 offers a minute per campaign). The service
runs in production's shape, `stocksync run` itself (`--shape run`: the ingest worker, the push
worker and beat as three processes, each pool at its default concurrency); `--shape one-worker`
is the former shape, one `celery worker -B` at the machine's concurrency. The sweep has the whole
read limit as its share (`STOCKSYNC_VERIFY_READ_SHARE=1`) and a period short enough that the
limit, not the pace, decides. One run, three segments over the same stack:

1. *alone*: the first round with nothing else going on; its time from the first read until the
   round ended (`last_full_sweep_at`) against the ideal (keys / 100,000 a minute);
2. *with stream*: the next round while a steady stream of changes (20 SKUs a second, new SKUs, in
   messages of 10 through `stocks.submit` and the ingest worker) is sent;
3. *alternating*: the stream goes on while the sweep is switched off and on in turns of
   `phase-seconds` (`pairs` times): off is the campaign's reads held back
   (`campaign.verify_blocked_until` an hour ahead, as a read's 420 would: beat's passes still run
   and pick their batch, then stop without reading), on is that cleared. Freshness (sent ->
   accepted by the sandbox) is told apart by the phase its message was sent in, so both sides
   share the machine's noise.

Every process of the service (the supervisor, each worker's main and pool processes, beat) has
its RSS sampled every half second; the peak of each is reported. The 1-minute load average is
recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from celery import Celery
from sqlalchemy import Engine, text

from bench import RESULTS
from bench.drain_throughput import (
    fresh_services,
    pending,
    sandbox_process,
    stocksync_run,
    worker,
)

CAMPAIGN = 5
READ_LIMIT = 100_000  # the Market's offers returned a minute per campaign (v2)
STREAM_PER_SECOND = 20
STREAM_MESSAGE = 10


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
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE stock"))  # as autovacuum would have, long since
    chunk = 50_000
    for start in range(1, keys + 1, chunk):
        skus = {f"SKU-{g}": g % 1000 for g in range(start, min(start + chunk, keys + 1))}
        answer = requests.post(
            f"{market}/_sandbox/drift", json={"campaign": CAMPAIGN, "skus": skus}, timeout=120
        )
        answer.raise_for_status()


def campaign_row(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("""
                SELECT last_full_sweep_at, round_started_at, round_keys, keys_checked_total,
                       clock_timestamp() AS now
                FROM campaign WHERE campaign_id = :c
            """),
            {"c": CAMPAIGN},
        ).one()


def stored(engine: Engine) -> int:
    """The stream's keys in the outbox (ingested)."""
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM stock WHERE sku LIKE 'F%'")).scalar_one()
        )


def first_read_at(engine: Engine) -> datetime:
    with engine.connect() as conn:
        moment: datetime = conn.execute(
            text("SELECT min(started_at) FROM market_request WHERE kind = 'read'")
        ).scalar_one()
    return moment


def hold_reads(engine: Engine, held: bool) -> None:
    """Switches the sweep off (reads held back an hour, as a read's 420 would) or on again."""
    with engine.begin() as conn:
        conn.execute(
            text("""
                UPDATE campaign SET verify_blocked_until =
                    CASE WHEN :held THEN clock_timestamp() + interval '1 hour' END
                WHERE campaign_id = :c
            """),
            {"c": CAMPAIGN, "held": held},
        )


class Stream:
    """New SKUs at STREAM_PER_SECOND through `stocks.submit`, each tagged with the phase it was
    sent in."""

    def __init__(self, broker: str) -> None:
        self.producer = Celery("bench-verify", broker=broker, set_as_current=False)
        self.sent: dict[str, tuple[float, str]] = {}
        self.phase = "none"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start, n = time.time(), 0
        while not self.stop.is_set():
            due = start + n * STREAM_MESSAGE / STREAM_PER_SECOND
            if due > time.time():
                time.sleep(due - time.time())
            skus = [f"F{n}-{i}" for i in range(STREAM_MESSAGE)]
            at = datetime.now(UTC).isoformat()
            changes = [
                {"campaign_id": CAMPAIGN, "sku": s, "count": 1, "occurred_at": at} for s in skus
            ]
            phase = self.phase
            self.producer.send_task(
                "stocks.submit", kwargs={"changes": changes}, queue="stocks.changes"
            )
            now = time.time()
            for s in skus:
                self.sent[s] = (now, phase)
            n += 1

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self.producer.close()


def quantiles(values: list[float]) -> dict[str, Any]:
    if len(values) < 2:
        return {"n": len(values)}
    values = sorted(values)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50_s": round(q[49], 3),
        "p99_s": round(q[98], 3),
        "max_s": round(values[-1], 3),
    }


def freshness(market: str, sent: dict[str, tuple[float, str]]) -> dict[str, Any]:
    """Per phase: seconds from sending a change to the sandbox accepting it."""
    skus = requests.get(f"{market}/_sandbox/state?campaign={CAMPAIGN}", timeout=600).json()["skus"]
    by_phase: dict[str, list[float]] = {}
    missing = 0
    for sku, (at, phase) in sent.items():
        entry = skus.get(sku)
        if entry is None:
            missing += 1
            continue
        lag = datetime.fromisoformat(entry["accepted_at"]).timestamp() - at
        by_phase.setdefault(phase, []).append(lag)
    out: dict[str, Any] = {"missing": missing}
    for phase, lags in sorted(by_phase.items()):
        out[phase] = quantiles(lags)
    for side in ("off", "on"):
        pooled = [v for p, lags in by_phase.items() if p.startswith(side + "-") for v in lags]
        out[f"all_{side}"] = quantiles(pooled)
    return out


# --- the service's processes --------------------------------------------------------------------


class Service:
    """The running service: its root process and the role of each of its processes."""

    def __init__(self, root: psutil.Process, shape: str) -> None:
        self.root = root
        self.shape = shape
        self.peak: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _role(self, p: psutil.Process) -> str:
        try:
            line = " ".join(p.cmdline())
            parent = p.parent()
            parent_line = " ".join(parent.cmdline()) if parent else ""
        except psutil.Error:
            return "?"
        if p.pid == self.root.pid:
            return "stocksync run" if self.shape == "run" else "worker -B main"
        for role in ("ingest", "push"):  # a pool process is a fork: its parent's command line
            if f"--hostname={role}@" in parent_line:
                return f"{role} pool"
            if f"--hostname={role}@" in line:
                return f"{role} main"
        if " beat" in line:
            return "beat"
        return "worker -B child (pool or beat)"

    def _sample(self) -> None:
        while not self.stop.is_set():
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for p in tree:
                try:
                    rss = p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                if p.pid not in self.roles:
                    self.roles[p.pid] = self._role(p)
                self.peak[p.pid] = max(self.peak.get(p.pid, 0.0), rss)
            time.sleep(0.5)

    def report(self) -> dict[str, list[int]]:
        """Peak RSS (MB) of each process, by role."""
        self.stop.set()
        self.thread.join()
        out: dict[str, list[int]] = {}
        for pid, mb in self.peak.items():
            out.setdefault(self.roles.get(pid, "?"), []).append(round(mb))
        return {role: sorted(v, reverse=True) for role, v in sorted(out.items())}


@contextmanager
def production(
    db: str, broker: str, market: str, log_dir: Path, **settings: str
) -> Iterator[Service]:
    """`stocksync run` itself: its own command lines (stocksync/commands/run.py), the pools at
    their default concurrency (STOCKSYNC_INGEST_CONCURRENCY, STOCKSYNC_PUSH_CONCURRENCY)."""
    log = log_dir / "run.log"
    with stocksync_run(
        db,
        broker,
        market,
        log,
        data_dir=log_dir / "data",
        extra_args=("--loglevel=INFO",),
        settings=settings,
    ) as proc:
        yield Service(psutil.Process(proc.pid), "run")


@contextmanager
def one_worker(
    db: str, broker: str, market: str, log_dir: Path, **settings: str
) -> Iterator[Service]:
    """The former shape: one `celery worker -B`, at the machine's concurrency."""
    with worker(db, broker, market, log_dir / "worker.log", **settings) as proc:
        assert proc.process is not None
        yield Service(psutil.Process(proc.process.pid), "one-worker")


def verify_task_seconds(log_dir: Path) -> dict[str, Any]:
    """The sweep's beat tasks from the workers' log: how many, and their run time."""
    found = [
        float(m.group(1))
        for path in log_dir.glob("*.log")
        for m in re.finditer(
            r"Task stocks\.verify\[[^\]]+\] succeeded in ([0-9.]+)s",
            path.read_text("utf-8", "replace"),
        )
    ]
    return {"tasks": len(found), "seconds": round(sum(found), 1), **quantiles(found)}


def run(keys: int, shape: str, pairs: int, phase_seconds: float, log_dir: Path) -> dict[str, Any]:
    ideal = keys / READ_LIMIT * 60
    cap = 2 * ideal + 60
    settings = {
        # A period of half the ideal: the pace allows more than the limit, which decides.
        "verify_hours": f"{keys / READ_LIMIT / 60 / 2:.5f}",
        "verify_read_limit_per_minute": str(READ_LIMIT),
        "verify_read_share": "1",
        "verify_interval_seconds": "1",
        "rate_limit_skus_per_minute": "100000",
    }
    out: dict[str, Any] = {"keys": keys, "shape": shape, "ideal_seconds": round(ideal, 1)}
    start = production if shape == "run" else one_worker
    with fresh_services() as (db, broker, engine), sandbox_process() as market:
        loading = time.monotonic()
        load_acknowledged(engine, market, keys)
        out["load_seconds"] = round(time.monotonic() - loading, 1)
        stream = Stream(broker)
        with start(db, broker, market, log_dir, **settings) as service:

            def round_ends(after: datetime | None, what: str) -> Any:
                deadline = time.monotonic() + cap
                while time.monotonic() < deadline:
                    row = campaign_row(engine)
                    if row.last_full_sweep_at is not None and (
                        after is None or row.last_full_sweep_at > after
                    ):
                        return row
                    time.sleep(0.5)
                raise TimeoutError(f"{what}: no full sweep within {cap:.0f} s")

            # 1. alone
            ended = round_ends(None, "alone")
            took = (ended.last_full_sweep_at - first_read_at(engine)).total_seconds()
            out["alone"] = {
                "checked": int(ended.keys_checked_total),
                "sweep_seconds": round(took, 1),
                "ratio_to_ideal": round(took / ideal, 3),
            }
            print(json.dumps({"alone": out["alone"]}), flush=True)
            # 2. with the stream
            stream.phase = "with-stream"
            stream.start()
            row = ended
            while row.round_keys is None:  # the next round's keys, counted when it starts
                time.sleep(0.2)
                row = campaign_row(engine)
            round_keys = int(row.round_keys)
            second = round_ends(ended.last_full_sweep_at, "with stream")
            took = (second.last_full_sweep_at - ended.last_full_sweep_at).total_seconds()
            ideal_round = round_keys / READ_LIMIT * 60
            out["with_stream"] = {
                "round_keys": round_keys,
                "sweep_seconds": round(took, 1),
                "ratio_to_ideal": round(took / ideal_round, 3),
            }
            print(json.dumps({"with_stream": out["with_stream"]}), flush=True)
            # 3. alternating: off, on, off, on ...
            phases = []
            for n in range(pairs):
                for side in ("off", "on"):
                    hold_reads(engine, side == "off")
                    before = campaign_row(engine)
                    stream.phase = f"{side}-{n}"
                    time.sleep(phase_seconds)
                    after = campaign_row(engine)
                    phases.append(
                        {
                            "phase": stream.phase,
                            "keys_read": int(after.keys_checked_total - before.keys_checked_total),
                        }
                    )
            stream.phase = "after"
            hold_reads(engine, False)
            stream.finish()
            out["phases"] = phases
            wait_until = time.monotonic() + 120
            while time.monotonic() < wait_until and (
                stored(engine) < len(stream.sent) or pending(engine) > 0
            ):
                time.sleep(0.5)
            out["left_pending"] = pending(engine)
            reads = requests.get(f"{market}/_sandbox/reads", timeout=30).json()
            out["read_stats"] = reads.get("campaigns", {}).get(str(CAMPAIGN))
            out["peak_rss_mb"] = service.report()
        out["freshness"] = freshness(market, stream.sent)
    out["verify_tasks"] = verify_task_seconds(log_dir)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="30,000 keys, for a smoke run")
    parser.add_argument("--keys", type=int, default=None, help="this many keys")
    parser.add_argument("--shape", choices=("run", "one-worker"), default="run")
    parser.add_argument("--pairs", type=int, default=4, help="off/on pairs of the stream phase")
    parser.add_argument("--phase-seconds", type=float, default=60.0)
    args = parser.parse_args()
    keys = args.keys or (30_000 if args.quick else 300_000)
    log_dir = RESULTS / f"verify-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_before": os.getloadavg()[0],
    }
    out.update(run(keys, args.shape, args.pairs, args.phase_seconds, log_dir))
    out["load_after"] = os.getloadavg()[0]
    (log_dir / "result.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    print(f"results in {log_dir}")


if __name__ == "__main__":
    main()
