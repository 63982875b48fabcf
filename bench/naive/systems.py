"""The three systems of `python -m bench.naive`, each run on a fresh sandbox with the same faults.

Every run: a fresh sandbox process (`python -m sandbox`, the real limit rule at the scaled rate,
seeded faults), the stream sent on schedule by a producer thread, and a watch loop that stops
when the sandbox holds the expected state (after the stream's end), when a naive system has
handled every change, or at the time limit. Then the sandbox's counters and state are measured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import requests
from celery import Celery

from bench import ROOT
from bench import drain_throughput as drain
from bench.naive.producer import NaiveProducer
from bench.naive.workload import Workload, paced, ticks
from stocksync.processes import ProcessExited, stop_process_group, wait_for_log_line
from tests import services

POLL_SECONDS = 0.5
# The same flags as the stocksync worker of tests/services.py (log level, no gossip or mingle).
NAIVE_WORKER = (
    *(sys.executable, "-m", "celery", "-A", "bench.naive.tasks", "worker", "-l", "info"),
    *("--without-gossip", "--without-mingle"),
)
# Naive B's table, as its user would create it by hand; naive_progress is bench instrumentation.
NAIVE_SCHEMA = """
CREATE TABLE naive_stock (
    campaign_id bigint NOT NULL,
    sku text NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (campaign_id, sku)
);
CREATE TABLE naive_progress (outcome text PRIMARY KEY, n bigint NOT NULL);
"""


@dataclass(frozen=True)
class Setup:
    """What is the same for the three systems of one run."""

    limit: int  # SKUs per campaign per minute: the sandbox's, stocksync's, naive B's rate_limit
    faults: dict[str, Any]  # sandbox settings (POST /_sandbox/config)
    grace: float  # seconds after the stream's last change before a run is stopped
    seed: int
    log_dir: Path
    naive_threads: int = 4  # naive A's producer threads


@dataclass
class Clock:
    """A run's start, on both clocks: the workload's instants are offsets from `wall`."""

    mono: float
    wall: datetime

    @classmethod
    def now(cls, lead: float = 0.5) -> Clock:
        """A start `lead` seconds from now, so every producer thread is ready for it."""
        return cls(time.monotonic() + lead, datetime.now(UTC) + timedelta(seconds=lead))


@contextmanager
def sandbox(setup: Setup) -> Iterator[str]:
    """A fresh sandbox process with the scaled limit and the faults."""
    with drain.sandbox_process("--rate-limit", str(setup.limit), "--seed", str(setup.seed)) as url:
        requests.post(url + "/_sandbox/config", json=setup.faults, timeout=10).raise_for_status()
        yield url


def sandbox_counts(market: str) -> tuple[dict[int, dict[str, int]], datetime | None]:
    """{campaign: {sku: count}} at the sandbox, and when its last write was accepted."""
    body = requests.get(market + "/_sandbox/state", timeout=30).json()["campaigns"]
    counts: dict[int, dict[str, int]] = {}
    last: datetime | None = None
    for campaign, skus in body.items():
        counts[int(campaign)] = {sku: int(entry["count"]) for sku, entry in skus.items()}
        for entry in skus.values():
            accepted = datetime.fromisoformat(entry["accepted_at"])
            last = accepted if last is None or accepted > last else last
    return counts, last


def holds(market: str, expected: dict[int, dict[str, int]]) -> bool:
    """True when the sandbox holds exactly the expected counts."""
    counts, _ = sandbox_counts(market)
    return all(counts.get(c, {}) == skus for c, skus in expected.items())


def watch(
    market: str,
    expected: dict[int, dict[str, int]],
    stream_done: Callable[[], bool],
    finished: Callable[[], bool],
    deadline: float,
) -> str:
    """Waits for the outcome: "converged", "finished" (all handled, state wrong), "time limit"."""
    while True:
        if stream_done() and holds(market, expected):
            return "converged"
        if finished():
            return "converged" if holds(market, expected) else "finished"
        if time.monotonic() > deadline:
            return "time limit"
        time.sleep(POLL_SECONDS)


def measure(
    market: str,
    workload: Workload,
    clock: Clock,
    outcome: str,
    stopped: float,
    handled: int,
) -> dict[str, Any]:
    """The common figures of one system's run, from the sandbox and the run's clock."""
    expected, intent = workload.expected(), workload.naive_intent()
    counts, last_write = sandbox_counts(market)
    stats = requests.get(market + "/_sandbox/stats", timeout=30).json()
    lost = off = astray = 0
    for campaign, skus in expected.items():
        held = counts.get(campaign, {})
        for sku, value in skus.items():
            if held.get(sku) != value:
                lost += 1
                off += abs(value - held.get(sku, 0))
            astray += held.get(sku) != intent[campaign][sku]
    if outcome == "converged" and last_write is not None:
        elapsed = (last_write - clock.wall).total_seconds()
    else:
        elapsed = stopped - clock.mono
    by_status = stats["requests_by_status"]
    return {
        "outcome": outcome,
        "changes": len(workload.changes),
        "handled": handled,
        "elapsed_s": round(elapsed, 1),
        "after_stream_s": round(elapsed - workload.seconds, 1),
        "changes_per_min": round(handled / elapsed * 60) if elapsed > 0 else None,
        "requests": stats["requests"],
        "requests_by_status": by_status,
        "r420": by_status.get("420", 0) - stats["injected"].get("420", 0),
        "r420_parallel": stats["parallel_limited"],  # past 4 requests in flight
        "r420_skus": stats["rate_limited"],  # past the SKUs of the rolling minute
        "skus_accepted": stats["skus_accepted"],
        "stale_overwrites": stats["stale_overwrites"],
        "lost_keys": lost,
        "keys": sum(len(skus) for skus in expected.values()),
        "units_off": off,
        # Keys that differ from what naive semantics intend (naive_intent): delivery losses.
        "keys_off_naive_intent": astray,
        "injected": stats["injected"],
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _stream_thread(target: Callable[[], None]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        try:
            target()
        finally:
            done.set()

    thread = threading.Thread(target=run, name="bench-producer", daemon=True)
    thread.start()
    return thread, done


def run_stocksync(workload: Workload, setup: Setup) -> dict[str, Any]:
    """Producer `send_task("stocks.submit")` every 0.1 s with what is due → worker with beat."""
    log = setup.log_dir / f"stocksync-{setup.seed}.log"
    with (
        drain.fresh_services() as (database, broker, engine),
        sandbox(setup) as market,
        drain.worker(database, broker, market, log, rate_limit_skus_per_minute=str(setup.limit)),
    ):
        producer = Celery(broker=broker)
        stop = threading.Event()
        clock = Clock.now()
        sent = 0

        def produce() -> None:
            nonlocal sent
            for batch in ticks(workload.changes, clock.mono, stop):
                producer.send_task(
                    "stocks.submit",
                    kwargs={"changes": [c.contract(clock.wall) for c in batch]},
                    queue="stocks.changes",
                )
                sent += len(batch)

        thread, stream_done = _stream_thread(produce)
        deadline = clock.mono + workload.seconds + setup.grace
        outcome = watch(market, workload.expected(), stream_done.is_set, lambda: False, deadline)
        stopped = time.monotonic()
        stop.set()
        thread.join()
        result = measure(market, workload, clock, outcome, stopped, sent)
        result["pending_keys_at_end"] = drain.pending(engine)
    return result


def run_naive_a(workload: Workload, setup: Setup) -> dict[str, Any]:
    """The producer PUTs each change itself, from `setup.naive_threads` threads, no limiter."""
    with sandbox(setup) as market:
        naive = NaiveProducer(market, threads=setup.naive_threads)
        stop = threading.Event()
        clock = Clock.now()
        thread, done = _stream_thread(lambda: naive.run(workload.changes, clock.mono, stop))
        deadline = clock.mono + workload.seconds + setup.grace
        outcome = watch(market, workload.expected(), lambda: False, done.is_set, deadline)
        stopped = naive.last_done if outcome != "time limit" else time.monotonic()
        stop.set()
        thread.join()
        result = measure(market, workload, clock, outcome, stopped, naive.handled)
        result["producer_saw"] = naive.report()
        result["threads"] = setup.naive_threads
    return result


@contextmanager
def naive_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A bench.naive.tasks worker`, default concurrency and acks, until ready."""
    with log.open("ab") as out:
        offset = out.tell()
        proc = subprocess.Popen(
            [*NAIVE_WORKER, "-n", f"naive-{uuid.uuid4().hex[:8]}@%h"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            wait_for_log_line(proc, log, offset, 60)
        except (ProcessExited, TimeoutError):
            raise RuntimeError(f"naive worker did not start; see {log}") from None
        yield proc
    finally:
        stop_process_group(proc)


@contextmanager
def naive_database() -> Iterator[str]:
    """A fresh, plain database with the naive tables; its libpq URL."""
    name = f"naive_b_{uuid.uuid4().hex[:10]}"
    services.admin_execute(f'CREATE DATABASE "{name}"')
    url = services.url_for_database(name).replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(NAIVE_SCHEMA)
        yield url
    finally:
        services.drop_database(name)


def _progress(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {str(k): int(n) for k, n in conn.execute("SELECT outcome, n FROM naive_progress")}


def run_naive_b(workload: Workload, setup: Setup, rate_limited: bool = True) -> dict[str, Any]:
    """A Celery task per change with rate_limit = the Market's limit and autoretry_for.

    `rate_limited=False` leaves `rate_limit` out (the variant naive-b-nolimit).
    """
    with naive_database() as database, services.rabbit_vhost() as broker, sandbox(setup) as market:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKSYNC_", "NAIVE_"))}
        env.update(
            NAIVE_BROKER_URL=broker,
            NAIVE_DATABASE_URL=database,
            NAIVE_MARKET_URL=market,
            NAIVE_RATE_LIMIT=f"{setup.limit}/m" if rate_limited else "",
            PYTHONPATH=str(ROOT),
        )
        with naive_worker(env, setup.log_dir / f"naive-b-{setup.seed}.log"):
            producer = Celery(broker=broker)
            stop = threading.Event()
            clock = Clock.now()

            def produce() -> None:
                for change in paced(workload.changes, clock.mono, stop):
                    kwargs: dict[str, Any] = {"campaign_id": change.campaign_id, "sku": change.sku}
                    kwargs["count" if change.count is not None else "delta"] = (
                        change.count if change.count is not None else change.delta
                    )
                    producer.send_task("naive.update_stock", kwargs=kwargs)

            def finished() -> bool:
                seen = _progress(database)
                return seen.get("success", 0) + seen.get("failure", 0) >= len(workload.changes)

            thread, _ = _stream_thread(produce)
            deadline = clock.mono + workload.seconds + setup.grace
            outcome = watch(market, workload.expected(), lambda: False, finished, deadline)
            stopped = time.monotonic()
            stop.set()
            thread.join()
            seen = _progress(database)
            handled = seen.get("success", 0) + seen.get("failure", 0)
            result = measure(market, workload, clock, outcome, stopped, handled)
            result["worker_saw"] = seen
    return result
