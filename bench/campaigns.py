"""Many campaigns: what a drain pass costs with 1,000 campaigns, few of them with work.

Run: .venv/bin/python -m bench.campaigns [passes|end-to-end|repro] [--quick] [--no-verify]
     [--stream-seconds 60] [--per-message 10]
A fresh database gets 1,000 campaigns with 10 pending keys each plus idle (acknowledged) keys
spread over them (10 M in the full run, 100,000 with --quick), loaded in bulk and not analyzed
(the state right after a load). Timed with the Market left out (`worker.drain_pass.run_pass`
with claims collected, not pushed): the first pass over the 1,000 backlogged campaigns, the
number of passes until every campaign had its first batch, then, with every key acknowledged, a
pass over 1,000 idle campaigns and one over 1,000 campaigns of which 10 have pending keys. Each
pass also counts its database statements.

`end-to-end` then runs the production shape on that database: `stocksync run` (its ingest
worker, push worker and beat as separate processes) and the sandbox at the Market's default
limits. Two phases: the burst (the 10 keys of each of the 1,000 campaigns turn pending in one
commit) and a steady stream (the same 10,000 changes sent through RabbitMQ as `stocks.submit`
messages, evenly over --stream-seconds, the campaigns in turn). Each phase reports the drain
passes (Celery's `succeeded in` lines), the limiter's wait of each push (`limiter_wait_ms`),
the freshness, each campaign's first request and the peak RSS of every process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import threading
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import requests
from sqlalchemy import Connection, Engine, event, text

from bench import RESULTS
from bench.drain_throughput import (
    fresh_services,
    pending,
    sandbox_process,
    stocksync_run,
    worker,
)
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


def _role(process: psutil.Process) -> str:
    """Which part of `stocksync run` a process is: run, ingest, push (main or pool) or beat."""
    argv = " ".join(process.cmdline())
    for name in ("ingest", "push"):
        if f"--hostname={name}@" in argv:
            return name
    if " beat" in argv:
        return "beat"
    if "stocksync run" in argv:
        return "run"
    return "other"


class PeakRss:
    """Samples every process of `stocksync run`'s tree every 0.5 s, in a thread: the peak RSS
    and the CPU seconds used during the phase per process, named by role (a pool child as
    `<worker> pool`), and the machine's busy CPU seconds over the phase (all processes:
    PostgreSQL, RabbitMQ, the sandbox, the benchmark and other sessions' work too)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak: dict[int, tuple[str, float]] = {}
        self.cpu: dict[int, tuple[float, float]] = {}  # pid: (at the first sample, at the last)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.machine_busy = 0.0

    def _sample(self) -> None:
        for p in _tree(self.pid):
            with contextlib.suppress(psutil.Error):
                role = _role(p)
                if role == "other":
                    role = f"{_role(p.parent())} pool"
                rss = p.memory_info().rss / 2**20
                self.peak[p.pid] = (role, max(self.peak.get(p.pid, (role, 0.0))[1], rss))
                times = p.cpu_times()
                used = times.user + times.system
                self.cpu[p.pid] = (self.cpu.get(p.pid, (used, used))[0], used)

    def _run(self) -> None:
        while not self.done.wait(0.5):
            self._sample()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def __enter__(self) -> PeakRss:
        self._sample()
        self.started_busy = self._busy()
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.done.set()
        self.thread.join()
        self._sample()
        self.machine_busy = self._busy() - self.started_busy

    def by_role(self) -> dict[str, list[int]]:
        roles: dict[str, list[int]] = defaultdict(list)
        for role, mb in self.peak.values():
            roles[role].append(round(mb))
        return {role: sorted(mbs) for role, mbs in sorted(roles.items())}

    def cpu_by_role(self) -> dict[str, float]:
        roles: dict[str, float] = defaultdict(float)
        for pid, (first, last) in self.cpu.items():
            roles[self.peak[pid][0]] += last - first
        return {role: round(s, 1) for role, s in sorted(roles.items())} | {
            "machine_busy": round(self.machine_busy, 1)
        }


_DRAIN_DONE = re.compile(
    rb"Task stocks\.drain\[[0-9a-f-]+\] succeeded in ([0-9.]+)s: "
    rb"\{'campaigns': (\d+), 'served': (\d+), 'batches': (\d+)\}"
)
_LIMITER_WAIT = re.compile(rb"event=push .*?limiter_wait_ms=(\d+)")


def from_log(log: Path, offset: int) -> dict[str, Any]:
    """What the push worker logged after byte `offset`: each drain pass (Celery's `succeeded
    in` line: seconds, campaigns with work, served) and each push's limiter wait."""
    with log.open("rb") as f:
        f.seek(offset)
        written = f.read()
    passes = [(float(m[1]), int(m[2]), int(m[3])) for m in _DRAIN_DONE.finditer(written)]
    waits = [int(m[1]) / 1000 for m in _LIMITER_WAIT.finditer(written)]
    busy = [p for p in passes if p[1] > 0]
    return {
        "drain_passes": len(passes),
        "drain_pass_s": _quantiles([p[0] for p in passes]),
        "drain_pass_with_work_s": _quantiles([p[0] for p in busy]),
        "campaigns_with_work_per_pass": _quantiles([float(p[1]) for p in busy]),
        "served_per_pass": _quantiles([float(p[2]) for p in busy]),
        "limiter_wait_s": _quantiles(waits),
    }


def _until_delivered(engine: Engine, since: datetime, keys: int, timeout: float) -> float:
    """Seconds until `keys` stream keys changed since `since` are acknowledged (or `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with engine.connect() as conn:
            done = conn.execute(
                text(
                    "SELECT count(*) FROM stock WHERE sku LIKE 'new-%' "
                    "AND changed_at >= :since AND acked_version = version"
                ),
                {"since": since},
            ).scalar_one()
        if done >= keys and pending(engine) == 0:
            break
        time.sleep(0.5)
    return time.monotonic() - started


def _db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("SELECT clock_timestamp()")).scalar_one()


def burst(engine: Engine, log: Path, pid: int, timeout: float = 600.0) -> dict[str, Any]:
    """The 10 keys of each of the 1,000 campaigns turn pending in one commit; until all are
    acknowledged: each campaign's first request after that commit (the limiter's leave:
    `market_request.started_at`), the freshness (acknowledged - turned pending), drain passes,
    limiter waits and each process's peak RSS."""
    offset = log.stat().st_size
    with PeakRss(pid) as rss:
        with engine.begin() as conn:
            since = (
                conn.execute(
                    text(
                        "UPDATE stock SET abs_count = abs_count + 1, version = version + 1, "
                        "changed_at = clock_timestamp(), last_occurred_at = clock_timestamp() "
                        "WHERE sku LIKE 'new-%' RETURNING now()"
                    )
                )
                .scalars()
                .first()
            )
        assert since is not None
        seconds = _until_delivered(engine, since, CAMPAIGNS * PENDING_PER_CAMPAIGN, timeout)
    with engine.connect() as conn:
        fresh = _column(
            conn,
            "SELECT extract(epoch FROM acked_at - changed_at) FROM stock "
            "WHERE sku LIKE 'new-%' AND acked_version = version AND changed_at >= :since",
            since=since,
        )
        firsts = _column(
            conn,
            "SELECT extract(epoch FROM min(started_at) - :since) FROM market_request "
            "WHERE started_at >= :since AND kind = 'push' GROUP BY campaign_id",
            since=since,
        )
    return {
        "keys": len(fresh),
        "left_pending": pending(engine),
        "seconds": round(seconds, 1),
        "freshness_s": _quantiles(fresh),
        "first_request_s": _quantiles(firsts),
        **from_log(log, offset),
        "peak_rss_mb": rss.by_role(),
        "cpu_s": rss.cpu_by_role(),
    }


def stream(
    engine: Engine,
    broker: str,
    log: Path,
    pid: int,
    seconds: float,
    per_message: int = PENDING_PER_CAMPAIGN,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """The 10,000 changes (10 per campaign) sent through RabbitMQ as `stocks.submit` messages of
    `per_message` changes of one campaign, evenly over `seconds`, the campaigns in turn; until
    all are acknowledged: freshness from the send (acknowledged - the producer's send, same
    host's clock) and from the commit (acknowledged - committed), each campaign's first
    request after its first message, drain passes, limiter waits, peak RSS."""
    from celery import Celery

    per_campaign = PENDING_PER_CAMPAIGN // per_message
    messages = [(c, m) for m in range(per_campaign) for c in range(1, CAMPAIGNS + 1)]
    offset = log.stat().st_size
    producer = Celery(broker=broker)
    sent: dict[tuple[int, str], float] = {}
    first_sent: dict[int, float] = {}
    since = _db_now(engine)
    with PeakRss(pid) as rss:
        start = time.time()
        for n, (campaign, m) in enumerate(messages):
            due = start + n * seconds / len(messages)
            if due > time.time():
                time.sleep(due - time.time())
            skus = [f"new-{m * per_message + i + 1}" for i in range(per_message)]
            now = time.time()
            producer.send_task(
                "stocks.submit",
                kwargs={
                    "changes": [
                        {
                            "campaign_id": campaign,
                            "sku": sku,
                            "count": 1000 + n,
                            "occurred_at": datetime.now(UTC).isoformat(),
                        }
                        for sku in skus
                    ]
                },
                queue="stocks.changes",
            )
            for sku in skus:
                sent[(campaign, sku)] = now
            first_sent.setdefault(campaign, now)
        sending = time.time() - start
        producer.close()
        waited = _until_delivered(engine, since, len(sent), timeout)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT group_id, sku, extract(epoch FROM acked_at), "
                "extract(epoch FROM acked_at - changed_at) FROM stock "
                "WHERE sku LIKE 'new-%' AND changed_at >= :since AND acked_version = version"
            ),
            {"since": since},
        ).all()
        firsts = {
            int(c): float(t)
            for c, t in conn.execute(
                text(
                    "SELECT campaign_id, extract(epoch FROM min(started_at)) FROM market_request "
                    "WHERE started_at >= :since AND kind = 'push' GROUP BY campaign_id"
                ),
                {"since": since},
            )
        }
    from_send = [float(r[2]) - sent[(int(r[0]), str(r[1]))] for r in rows if (r[0], r[1]) in sent]
    return {
        "keys": len(rows),
        "messages": len(messages),
        "changes_per_message": per_message,
        "sending_s": round(sending, 1),
        "left_pending": pending(engine),
        "delivered_after_last_send_s": round(waited, 1),
        "freshness_from_send_s": _quantiles(from_send),
        "freshness_from_commit_s": _quantiles([float(r[3]) for r in rows]),
        "first_request_after_first_send_s": _quantiles(
            [firsts[c] - t for c, t in first_sent.items() if c in firsts]
        ),
        **from_log(log, offset),
        "peak_rss_mb": rss.by_role(),
        "cpu_s": rss.cpu_by_role(),
    }


def _column(conn: Connection, sql: str, **params: Any) -> list[float]:
    return [float(r[0]) for r in conn.execute(text(sql), params)]


def end_to_end(
    database_url: str,
    broker: str,
    engine: Engine,
    log: Path,
    stream_seconds: float = 60.0,
    per_message: int = PENDING_PER_CAMPAIGN,
    **settings: str,
) -> dict[str, Any]:
    """`stocksync run` (ingest worker, push worker, beat) and the sandbox (both at the Market's
    default limits) on the loaded database: first the burst, then the steady stream."""
    with (
        sandbox_process() as market,
        stocksync_run(
            database_url, broker, market, log, data_dir=log.parent / "data", settings=settings
        ) as proc,
    ):
        first = burst(engine, log, proc.pid)
        steady = stream(engine, broker, log, proc.pid, stream_seconds, per_message)
    return {"burst": first, "stream": steady}


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
    parser.add_argument(
        "--stream-seconds", type=float, default=60.0, help="the steady stream's length"
    )
    parser.add_argument(
        "--per-message",
        type=int,
        default=PENDING_PER_CAMPAIGN,
        choices=[1, 2, 5, 10],
        help="changes per stocks.submit message of the stream (one campaign each)",
    )
    args = parser.parse_args()
    log_dir = args.out or RESULTS / f"campaigns-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.mode == "repro":
        result = repro(log_dir / "repro.log")
    else:
        settings = {"verify_hours": "0"} if args.no_verify else {}
        idle = 10_000_000 if not args.quick else 100_000
        load_before = os.getloadavg()
        result = run(
            idle,
            args.mode == "end-to-end",
            log_dir,
            stream_seconds=args.stream_seconds,
            per_message=args.per_message,
            **settings,
        )
        result["load_average_before_after"] = [
            round(x, 2) for x in (*load_before, *os.getloadavg())
        ]
    (log_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def run(
    idle_keys: int,
    with_worker: bool,
    log_dir: Path,
    stream_seconds: float = 60.0,
    per_message: int = PENDING_PER_CAMPAIGN,
    **settings: str,
) -> dict[str, Any]:
    """`pass_costs` on a fresh database and vhost, then (`with_worker`) `end_to_end` on it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with fresh_services() as (database_url, broker, engine):
        result = pass_costs(engine, idle_keys)
        if with_worker:
            result["end_to_end"] = end_to_end(
                database_url,
                broker,
                engine,
                log_dir / "end-to-end.log",
                stream_seconds,
                per_message,
                **settings,
            )
    return result


if __name__ == "__main__":
    main()
