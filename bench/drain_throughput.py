"""Drain benchmarks: machinery without a limit, use of the limit, freshness, memory.

Run: .venv/bin/python -m bench.drain_throughput [machinery|limit|freshness|memory|all] [--quick]
Each run gets a fresh PostgreSQL database and RabbitMQ vhost; the sandbox runs in its own process
(`python -m sandbox`) so that it does not share the benchmark's interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import Engine, text

from bench import RESULTS, ROOT
from domain.market_rules import SKUS_PER_REQUEST_MAX
from stocksync.processes import stop_process_group
from tests import services
from tests.integration.drain_support import load_pending
from tests.services import free_port, port_open, wait_for
from worker.database import make_engine


@contextmanager
def sandbox_process(*args: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the sandbox", lambda: port_open(port), 30, 0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def fresh_services() -> Iterator[tuple[str, str, Engine]]:
    template = services.create_migrated_template()
    try:
        with services.rabbit_vhost() as broker:
            engine = make_engine(services.url_for_database(template))
            try:
                yield services.url_for_database(template), broker, engine
            finally:
                engine.dispose()
    finally:
        services.drop_database(template)


def pending(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM stock WHERE version > acked_version")
            ).scalar_one()
        )


@contextmanager
def worker(
    database_url: str, broker: str, market: str, log: Path, **settings: str
) -> Iterator[services.WorkerProcess]:
    env = services.service_env(
        database_url,
        broker,
        STOCKSYNC_MARKET_BASE_URL=market,
        STOCKSYNC_MARKET_API_KEY="bench",
        **{f"STOCKSYNC_{k.upper()}": v for k, v in settings.items()},
    )
    proc = services.WorkerProcess(env, log, extra_args=("-B", "-s", str(log.with_suffix(".beat"))))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@contextmanager
def stocksync_run(
    database_url: str,
    broker: str,
    market: str,
    log: Path,
    *,
    data_dir: Path,
    wait_ready: bool = True,
    extra_args: tuple[str, ...] = (),
    settings: dict[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`stocksync run` as an operator starts it (`stocksync/commands/run.py`: migrations, then
    the ingest worker, the push worker and beat as separate processes at their default
    concurrency), its output appended to `log`, on `database_url` and `broker`, sending to
    `market`; `settings` are STOCKSYNC_* by suffix. With `wait_ready`, yields once both workers
    said ` ready.` (a benchmark that times the start passes False). Stopped as the operator stops
    it: SIGTERM to the supervisor alone, which stops its children in order; the group killed
    after 60 s."""
    env = services.service_env(
        database_url,
        broker,
        STOCKSYNC_MARKET_BASE_URL=market,
        STOCKSYNC_MARKET_API_KEY="bench",
        STOCKSYNC_DATA_DIR=str(data_dir),
        **{f"STOCKSYNC_{k.upper()}": v for k, v in (settings or {}).items()},
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stocksync", "run", *extra_args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        if wait_ready:

            def ready() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"stocksync run exited ({proc.returncode})")
                return log.read_bytes().count(b" ready.") >= 2

            wait_for("the ingest and push workers", ready, 120, 0.2)
        yield proc
    finally:
        stop_process_group(proc, 60, whole_group=False)


def rss_mb(pid: int) -> float:
    """Resident set size of a process and its children, in MB (from /proc)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def machinery(keys: int, log_dir: Path) -> dict[str, Any]:
    """SKUs acknowledged per second, one worker, sandbox and limiter unlimited."""
    with fresh_services() as (db, broker, engine), sandbox_process("--unlimited") as market:
        with worker(
            db,
            broker,
            market,
            log_dir / "machinery.log",
            rate_limit_skus_per_minute="1000000000",
            max_parallel_requests_per_campaign="4",
            drain_interval_seconds="0.5",
        ):
            load_pending(engine, 5, keys)  # one commit: every key turns pending at once
            start = time.monotonic()
            while pending(engine) > 0:
                time.sleep(0.1)
            elapsed = time.monotonic() - start
        stats = requests.get(market + "/_sandbox/stats", timeout=10).json()
    assert stats["skus_accepted"] == keys, stats
    return {
        "keys": keys,
        "seconds": round(elapsed, 2),
        "skus_per_second": round(keys / elapsed),
        "requests": stats["requests"],
    }


def sql_alone(keys: int, workers: int = 2) -> dict[str, Any]:
    """The drain's SQL without Celery and HTTP: `workers` threads run a push's statements
    (`tasks/push.py` in order: renew, read, limiter permit and finish, acknowledge, release, the
    follow-up claim) on 200 OK answers made up here, as fast as PostgreSQL allows."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.claims import Claim, Claims
    from worker.market_client import MarketAnswer
    from worker.rate_limiter import Permit, RateLimiter

    with fresh_services() as (_db, _broker, engine):
        limiter = RateLimiter(engine, 1_000_000_000, 4)
        box = Claims(engine, limiter, 60.0, 20 * 3600.0)
        load_pending(engine, 5, keys)
        ok = MarketAnswer(200)

        def push(claim: Claim) -> list[Claim]:
            box.renew(claim.claim_id)
            batch = box.read(5, claim.claim_id)
            permit = limiter.acquire(5, len(batch))
            assert isinstance(permit, Permit), permit
            sent_at = box.renew_for_sending(claim.claim_id, 35.0)
            limiter.finish(permit, ok)
            box.renew(claim.claim_id)
            box.acknowledge(5, claim.claim_id, batch, sent_at)
            box.release(5, claim.claim_id)
            return box.claim(5, 60.0)

        start = time.monotonic()
        queue = box.claim(5, 60.0)
        with ThreadPoolExecutor(workers) as pool:
            while queue or pending(engine) > 0:
                if not queue:
                    queue = box.claim(5, 60.0)
                    continue
                queue = [c for more in pool.map(push, queue) for c in more]
        elapsed = time.monotonic() - start
    return {"keys": keys, "seconds": round(elapsed, 2), "skus_per_second": round(keys / elapsed)}


def sandbox_alone(requests_count: int, workers: int = 2) -> dict[str, Any]:
    """The unlimited sandbox's own rate: `workers` threads PUT full 2,000-SKU bodies through the
    production Market client, nothing else running in this process."""
    from concurrent.futures import ThreadPoolExecutor

    from pydantic import SecretStr

    from domain.market_payload import PendingStock, stocks_body
    from worker.market_client import MarketClient

    now = datetime.now(UTC)
    with sandbox_process("--unlimited") as market:

        def put(number: int) -> int:
            batch = [PendingStock(f"S{number}-{i}", i, 1, now) for i in range(SKUS_PER_REQUEST_MAX)]
            client = MarketClient(market, SecretStr("bench"), None, 30.0)
            answer = client.put_stocks(5, stocks_body(batch, now))
            assert answer.status == 200, answer.status
            return len(batch)

        start = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            skus = sum(pool.map(put, range(requests_count)))
        elapsed = time.monotonic() - start
    return {
        "requests": requests_count,
        "seconds": round(elapsed, 2),
        "requests_per_second": round(requests_count / elapsed, 1),
        "skus_per_second": round(skus / elapsed),
    }


def limit_use(limit: int, minutes: float, log_dir: Path) -> dict[str, Any]:
    """Delivery time of a backlog of `minutes` worth of SKUs at `limit`, against the ideal."""
    backlog = int(limit * minutes)
    with (
        fresh_services() as (db, broker, engine),
        sandbox_process("--rate-limit", str(limit)) as market,
    ):
        with worker(
            db, broker, market, log_dir / "limit.log", rate_limit_skus_per_minute=str(limit)
        ):
            load_pending(engine, 5, backlog)
            start = time.monotonic()
            while pending(engine) > 0:
                time.sleep(0.2)
            elapsed = time.monotonic() - start
        stats = requests.get(market + "/_sandbox/stats", timeout=10).json()
    ideal = backlog / limit * 60
    return {
        "limit": limit,
        "backlog": backlog,
        "seconds": round(elapsed, 1),
        "ideal_seconds": ideal,
        "ratio": round(elapsed / ideal, 3),
        "r420": stats["requests_by_status"].get("420", 0),
        "max_skus_in_window": stats["campaigns"]["5"]["max_skus_accepted_in_window"],
    }


def freshness(limit: int, seconds: float, log_dir: Path) -> dict[str, Any]:
    """At half the limit, time from send_task to the sandbox's acceptance of that SKU."""
    from celery import Celery

    rate = limit / 2 / 60  # SKUs per second
    per_message = 10
    with (
        fresh_services() as (db, broker, engine),
        sandbox_process("--rate-limit", str(limit)) as market,
    ):
        producer = Celery(broker=broker)
        sent: dict[str, float] = {}
        with worker(
            db, broker, market, log_dir / "freshness.log", rate_limit_skus_per_minute=str(limit)
        ):
            start = time.time()
            n = 0
            while time.time() - start < seconds:
                due = start + n * per_message / rate
                if due > time.time():
                    time.sleep(due - time.time())
                skus = [f"F{n}-{i}" for i in range(per_message)]
                now = time.time()
                producer.send_task(
                    "stocks.submit",
                    kwargs={
                        "changes": [
                            {
                                "campaign_id": 5,
                                "sku": s,
                                "count": 1,
                                "occurred_at": datetime.now(UTC).isoformat(),
                            }
                            for s in skus
                        ]
                    },
                    queue="stocks.changes",
                )
                for s in skus:
                    sent[s] = now
                n += 1
            while pending(engine) > 0 or len(
                requests.get(market + "/_sandbox/state?campaign=5", timeout=30).json()["skus"]
            ) < len(sent):
                time.sleep(0.5)
        state = requests.get(market + "/_sandbox/state?campaign=5", timeout=30).json()["skus"]
    lags = sorted(
        datetime.fromisoformat(state[s]["accepted_at"]).timestamp() - t for s, t in sent.items()
    )
    q = statistics.quantiles(lags, n=100)
    return {
        "limit": limit,
        "skus": len(lags),
        "p50": round(q[49], 3),
        "p99": round(q[98], 3),
        "max": round(lags[-1], 3),
    }


def memory(keys: int, log_dir: Path) -> dict[str, Any]:
    """Peak RSS of a worker and of a separate beat while draining `keys` pending keys."""
    with fresh_services() as (db, broker, engine), sandbox_process("--unlimited") as market:
        load_pending(engine, 5, keys)
        env = services.service_env(
            db,
            broker,
            STOCKSYNC_MARKET_BASE_URL=market,
            STOCKSYNC_MARKET_API_KEY="bench",
            STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE="1000000000",
            STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN="4",
        )
        beat_log = (log_dir / "beat.log").open("wb")
        beat = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker",
                "beat",
                "-s",
                str(log_dir / "beat.schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=beat_log,
            stderr=subprocess.STDOUT,
        )
        proc = services.WorkerProcess(env, log_dir / "memory.log").start()
        peak_worker = peak_beat = 0.0
        start = time.monotonic()
        drained_to = keys
        try:
            while time.monotonic() - start < 120:
                peak_worker = max(peak_worker, rss_mb(proc.process.pid))  # type: ignore[union-attr]
                peak_beat = max(peak_beat, rss_mb(beat.pid))
                time.sleep(0.5)
                drained_to = pending(engine)
                if drained_to == 0:
                    break
        finally:
            proc.stop()
            beat.terminate()
            beat.wait(10)
            beat_log.close()
    return {
        "keys": keys,
        "peak_worker_mb": round(peak_worker),
        "peak_beat_mb": round(peak_beat),
        "left_pending": drained_to,
        "seconds": round(time.monotonic() - start),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "which",
        nargs="?",
        default="all",
        choices=["machinery", "limit", "freshness", "memory", "all"],
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    log_dir = RESULTS / f"drain-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    if args.which in ("machinery", "all"):
        runs = [machinery(20_000 if args.quick else 200_000, log_dir) for _ in range(args.runs)]
        out["machinery"] = {
            "runs": runs,
            "median_skus_per_second": statistics.median(r["skus_per_second"] for r in runs),
        }
        print(json.dumps(out["machinery"]), flush=True)
    if args.which in ("limit", "all"):
        out["limit"] = limit_use(6_000 if args.quick else 100_000, 3, log_dir)
        print(json.dumps(out["limit"]), flush=True)
    if args.which in ("freshness", "all"):
        out["freshness"] = freshness(100_000, 20 if args.quick else 60, log_dir)
        print(json.dumps(out["freshness"]), flush=True)
    if args.which in ("memory", "all"):
        out["memory"] = memory(200_000 if args.quick else 5_000_000, log_dir)
        print(json.dumps(out["memory"]), flush=True)
    (log_dir / "result.json").write_text(json.dumps(out, indent=2))
    print(f"results in {log_dir}")


if __name__ == "__main__":
    main()
