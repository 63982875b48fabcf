"""Ingest benchmark: from `send_task("stocks.submit", ...)` to committed rows, on this machine's
RabbitMQ and PostgreSQL, ONE worker (`celery -A worker worker`, default concurrency), compared in
the same run, on the same broker and worker, with a task that does nothing (`bench.noop`).

Run: .venv/bin/python -m bench.ingest [--quick] [--runs N] [--profile]

Each run gets a fresh PostgreSQL database (copied from a migrated template) and a fresh RabbitMQ
vhost, starts one worker (`celery -A worker worker -I bench.noop_tasks`, the production app and
settings plus the no-op task) and measures three phases, one after the other:

  noop    N messages `bench.noop(changes=[one change])`          -> messages/s
  single  N messages `stocks.submit(changes=[one change])`       -> changes/s (= messages/s)
  batch   M messages `stocks.submit(changes=[500 changes])`      -> changes/s

A phase's clock starts before the first `send_task` and stops when the last message's effect is
seen: its rows all committed (`change_log` count), or for `bench.noop` the marker file its last
message touches. Payloads are built before the clock starts. The CPU seconds that each party used
during a phase (worker processes, PostgreSQL, RabbitMQ, this producer) are sampled with psutil.

--profile runs each phase once more in its own worker under cProfile (bench/noop_tasks.py) and
prints where the worker's processes spend their time; those runs are not part of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import celery
import psutil
from celery import Celery
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from bench import RESULTS, ROOT
from stocksync.processes import stop_process_group, wait_for
from tests import services
from worker.database import make_engine

QUEUE = "stocks.changes"
BATCH_SIZE = 500
DEADLOCKS: list[int] = []  # deadlocks that `store_in_process` met and retried
SKUS = 5_000


@dataclass
class Phase:
    name: str
    messages: int
    changes: int
    seconds: float
    send_seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    load: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def changes_per_second(self) -> float:
        return self.changes / self.seconds


# --- processes ------------------------------------------------------------------------------


class Worker:
    """`celery -A worker worker -I bench.noop_tasks`: production options, default concurrency and
    log level; the no-op task is the only addition."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "-I", "bench.noop_tasks"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.process.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        stop_process_group(self.process, 60)
        self._log.close()


def _named(*names: str, cmdline_has: str = "", cmdline_lacks: str = "") -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] not in names:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline_has and cmdline_has not in cmdline:
            continue
        if cmdline_lacks and cmdline_lacks in cmdline:
            continue
        found.append(proc)
    return found


class CpuMeter:
    """CPU seconds (user + system) per party between `start()` and `stop()`.

    `postgres` is the backends (and autovacuum) of the run's own database, `postgres-bg` the
    server's shared processes (WAL writer, checkpointer, ...), `machine` all CPUs, so that
    `others` (machine minus the parties) shows what else ran on the machine meanwhile.
    """

    def __init__(self, worker: Worker, database: str) -> None:
        self.worker = worker
        self.parties: dict[str, Callable[[], list[psutil.Process]]] = {
            "worker": worker.processes,
            "postgres": lambda: _named("postgres", cmdline_has=f" {database}"),
            "postgres-bg": lambda: _named("postgres", cmdline_lacks=" stocksync_"),
            "rabbitmq": lambda: _named("beam.smp", cmdline_has="-s rabbit boot"),
            "producer": lambda: [psutil.Process()],
        }

    def _sample(self) -> dict[str, dict[int, float]]:
        """Per party, CPU seconds per process id (a process new since `start` counts whole)."""
        totals: dict[str, dict[int, float]] = {}
        for party, processes in self.parties.items():
            totals[party] = {}
            for proc in processes():
                try:
                    times = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                totals[party][proc.pid] = times.user + times.system
        machine = psutil.cpu_times()
        totals["machine"] = {0: machine.user + machine.system + machine.nice + machine.softirq}
        return totals

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        used = {
            party: round(
                sum(t - self._start[party].get(pid, 0.0) for pid, t in end[party].items()), 2
            )
            for party in end
        }
        used["others"] = round(used["machine"] - sum(used[p] for p in self.parties), 2)
        return used


# --- payloads -------------------------------------------------------------------------------


def change(rng: random.Random, run: str, number: int, now: datetime) -> dict[str, Any]:
    """A realistic change: the contract example's fields, 10 % absolute counts."""
    raw: dict[str, Any] = {
        "campaign_id": 1001,
        "sku": f"SKU-{rng.randrange(SKUS):05d}",
        "event_id": f"{run}:{number}",
        "occurred_at": (now - timedelta(seconds=rng.randrange(3600))).isoformat(),
    }
    if rng.random() < 0.1:
        raw["count"] = rng.randrange(1000)
    else:
        raw["delta"] = rng.choice([-2, -1, 1, 3])
    return raw


def payloads(run: str, messages: int, per_message: int) -> list[dict[str, Any]]:
    rng = random.Random(run)
    now = datetime.now(UTC)
    numbers = iter(range(messages * per_message))
    return [
        {"changes": [change(rng, run, next(numbers), now) for _ in range(per_message)]}
        for _ in range(messages)
    ]


# --- phases ---------------------------------------------------------------------------------


def committed(engine: Engine) -> Callable[[], int]:
    def count() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM change_log")).scalar_one())

    return count


def send_all(producer: Celery, task: str, messages: list[dict[str, Any]]) -> float:
    """Publishes every message as a producer does (by task name, JSON); returns the seconds."""
    started = time.perf_counter()
    with producer.producer_or_acquire() as publisher:
        for kwargs in messages:
            producer.send_task(task, kwargs=kwargs, queue=QUEUE, producer=publisher)
    return time.perf_counter() - started


def run_noop(producer: Celery, meter: CpuMeter, messages: list[dict[str, Any]]) -> Phase:
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "done"
        meter.start()
        started = time.perf_counter()
        send_seconds = send_all(producer, "bench.noop", messages)
        # The last message says when the queue is through (with concurrency c, at most c - 1
        # messages sent before it may still be running: negligible against N).
        producer.send_task(
            "bench.noop", kwargs={**messages[-1], "marker": str(marker)}, queue=QUEUE
        )
        wait_for("the worker to finish (see its log)", marker.exists, 600, 0.002)
        seconds = time.perf_counter() - started
        cpu = meter.stop()
    n = len(messages) + 1
    return Phase("noop", n, n, seconds, send_seconds, cpu)


def run_submit(
    name: str, producer: Celery, meter: CpuMeter, engine: Engine, messages: list[dict[str, Any]]
) -> Phase:
    count = committed(engine)
    before = count()
    expected = before + sum(len(m["changes"]) for m in messages)
    meter.start()
    started = time.perf_counter()
    send_seconds = send_all(producer, "stocks.submit", messages)
    wait_for("the worker to finish (see its log)", lambda: count() >= expected, 600, 0.01)
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    if count() != expected:
        raise RuntimeError(f"{name}: {count() - before} changes committed, {expected} expected")
    return Phase(name, len(messages), expected - before, seconds, send_seconds, cpu)


@contextmanager
def environment(template: str, **extra: str) -> Iterator[tuple[Engine, Celery, CpuMeter]]:
    """A fresh database and vhost, a worker on them, and a producer that imports nothing of ours."""
    database = services.create_database_from(template)
    url = services.url_for_database(database)
    engine = make_engine(url)
    try:
        with services.rabbit_vhost() as broker:
            log_dir = Path(tempfile.gettempdir()) / "stocksync-bench-ingest"
            log_dir.mkdir(parents=True, exist_ok=True)
            worker = Worker(services.service_env(url, broker, **extra), log_dir / f"{database}.log")
            producer = Celery(broker=broker)
            try:
                ready(producer, worker)
                yield engine, producer, CpuMeter(worker, database)
            finally:
                worker.stop()
                producer.close()
    finally:
        engine.dispose()
        services.drop_database(database)


def ready(producer: Celery, worker: Worker) -> None:
    """Waits until the worker runs tasks (it logs nothing at the default level)."""
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "ready"
        producer.send_task("bench.noop", kwargs={"marker": str(marker)}, queue=QUEUE)
        try:
            wait_for("the worker to finish (see its log)", marker.exists, 60, 0.05)
        except TimeoutError:
            raise RuntimeError(f"worker not ready; see {worker.log_path}") from None


def one_run(template: str, number: int, single: int, batches: int) -> list[Phase]:
    run = f"r{number}-{uuid.uuid4().hex[:6]}"
    one_change = payloads(run + "n", single, 1)
    singles = payloads(run + "s", single, 1)
    batch = payloads(run + "b", batches, BATCH_SIZE)
    with environment(template) as (engine, producer, meter):
        return [
            run_noop(producer, meter, one_change),
            run_submit("single", producer, meter, engine, singles),
            run_submit("batch", producer, meter, engine, batch),
        ]


# --- profile --------------------------------------------------------------------------------


def profile(template: str, single: int, batches: int, top: int) -> str:
    """Each phase once more in its own worker under cProfile; the busiest functions per role."""
    report = []
    for name in ("noop", "single", "batch"):
        with tempfile.TemporaryDirectory() as tmp:
            run = f"p-{name}-{uuid.uuid4().hex[:6]}"
            with environment(template, BENCH_PROFILE_DIR=tmp) as (engine, producer, meter):
                if name == "noop":
                    phase = run_noop(producer, meter, payloads(run, single, 1))
                elif name == "single":
                    phase = run_submit(name, producer, meter, engine, payloads(run, single, 1))
                else:
                    messages = payloads(run, batches, BATCH_SIZE)
                    phase = run_submit(name, producer, meter, engine, messages)
            report.append(
                f"== {name}: {phase.changes_per_second:,.0f} changes/s under the profiler; "
                f"CPU s {phase.cpu}"
            )
            for role in ("main", "child"):
                files = sorted(str(p) for p in Path(tmp).glob(f"{role}-*.prof"))
                if not files:
                    report.append(f"-- {role}: no profile written")
                    continue
                stats = pstats.Stats(*files)
                for order in ("tottime", "cumulative"):
                    report.append(f"-- {role} process(es), {len(files)} file(s), by {order}:")
                    report.append(_top(stats, order, top))
    return "\n".join(report)


def _top(stats: pstats.Stats, order: str, top: int) -> str:
    import io

    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats(order).print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(lines[start:])


# --- in-process statement timings -----------------------------------------------------------


def store_in_process(engine: Engine, messages: list[dict[str, Any]]) -> tuple[float, float]:
    """`store_message` of each (parsed) message in this process, no Celery, no broker: the wall
    and CPU seconds of the stores (parsing done before the clock starts)."""
    from domain.changes import parse_message
    from worker.ingest import store_message

    parsed = [parse_message((), m, datetime.now(UTC)) for m in messages]
    wall, cpu = time.perf_counter(), time.process_time()
    for message in parsed:
        while True:
            try:
                store_message(
                    engine, str(uuid.uuid4()), message.accepted, message.rejected, lambda c: c
                )
                break
            except OperationalError as exc:
                # Two stores creating overlapping new keys can deadlock (BENCHMARKS.md, "Goals");
                # the worker requeues the message then, so this stores it again.
                if getattr(exc.orig, "sqlstate", None) != "40P01":
                    raise
                DEADLOCKS.append(1)
    return time.perf_counter() - wall, time.process_time() - cpu


def _store_share(url: str, messages: list[dict[str, Any]]) -> int:
    """One ceiling process: its own engine, its share stored; the deadlocks it retried."""
    engine = make_engine(url)
    try:
        store_in_process(engine, messages)
    finally:
        engine.dispose()
    return len(DEADLOCKS)


def ceiling(template: str, single: int, batches: int, workers: int) -> dict[str, float]:
    """The ingest's SQL alone: the same messages stored by `workers` processes (as many as the
    worker's pool), each with its own connection, no Celery and no broker, on a fresh database."""
    from concurrent.futures import ProcessPoolExecutor

    database = services.create_database_from(template)
    url = services.url_for_database(database)
    run = f"c-{uuid.uuid4().hex[:6]}"
    out: dict[str, float] = {}
    try:
        for name, messages in (
            ("single", payloads(run + "s", single, 1)),
            ("batch", payloads(run + "b", batches, BATCH_SIZE)),
        ):
            shares = [messages[i::workers] for i in range(workers)]
            started = time.perf_counter()
            with ProcessPoolExecutor(workers) as pool:
                deadlocks = sum(pool.map(_store_share, [url] * workers, shares))
            seconds = time.perf_counter() - started
            out[f"{name}_deadlocks_retried"] = deadlocks
            out[f"{name}_changes_per_s"] = round(sum(len(m["changes"]) for m in messages) / seconds)
    finally:
        services.drop_database(database)
    return out


def statements(template: str, batches: int, single: int) -> str:
    """`parse_message` + `store_message` in this process (no Celery, no broker) on a fresh
    database: changes/s, client CPU per message and wall time per SQL statement, per 40 messages
    of 500 changes (the cost grows as `stock` collects dead tuples) and for one-change messages."""
    from sqlalchemy import event

    database = services.create_database_from(template)
    engine = make_engine(services.url_for_database(database))
    spent: dict[str, float] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info["started"] = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        words = statement.split()
        name = " ".join(words[:3]) if words[0] != "SELECT" else "SELECT " + words[1].rstrip(",")
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - conn.info["started"]

    def measure(label: str, messages: list[dict[str, Any]]) -> str:
        spent.clear()
        wall, cpu = store_in_process(engine, messages)
        n, changes = len(messages), sum(len(m["changes"]) for m in messages)
        per_statement = ", ".join(f"{k} {1000 * v / n:.2f}" for k, v in spent.items())
        return (
            f"{label}: {changes / wall:,.0f} changes/s, store CPU {1000 * cpu / n:.2f} ms/msg, "
            f"wall {1000 * wall / n:.2f} ms/msg; SQL ms/msg: {per_statement}"
        )

    lines = []
    try:
        run = f"st-{uuid.uuid4().hex[:6]}"
        big = payloads(run + "b", batches, BATCH_SIZE)
        for start in range(0, batches, 40):
            lines.append(measure(f"500-change msgs {start}-{start + 40}", big[start : start + 40]))
        lines.append(measure("1-change msgs", payloads(run + "s", single, 1)))
    finally:
        engine.dispose()
        services.drop_database(database)
    return "\n".join(lines)


# --- report ---------------------------------------------------------------------------------


def summary(runs: list[list[Phase]]) -> dict[str, Any]:
    def rates(name: str, per: Callable[[Phase], float]) -> list[float]:
        return [per(p) for phases in runs for p in phases if p.name == name]

    noop = rates("noop", lambda p: p.messages_per_second)
    single = rates("single", lambda p: p.changes_per_second)
    batch = rates("batch", lambda p: p.changes_per_second)
    ratios = [s / n for s, n in zip(single, noop, strict=True)]
    return {
        "noop_messages_per_s": _stats(noop),
        "single_changes_per_s": _stats(single),
        "batch_changes_per_s": _stats(batch),
        "single_vs_noop_ratio": _stats(ratios, digits=3),
        "cpu_ms_per_message": {
            name: cpu_per_unit(runs, name, 1000.0) for name in ("noop", "single", "batch")
        },
        "cpu_us_per_change_batch": cpu_per_unit(runs, "batch", 1e6, per_change=True),
    }


PARTIES = ("worker", "postgres", "postgres-bg", "rabbitmq", "producer")


def cpu_per_unit(
    runs: list[list[Phase]], name: str, scale: float, per_change: bool = False
) -> dict[str, float]:
    """Median CPU per message (or change) of each party, and what 2 idle cores would allow.

    CPU seconds per unit hardly depend on what else runs on the machine, unlike the rates: the
    `capacity_per_s` line is nproc divided by the CPU that one unit costs all parties together.
    """
    phases = [p for phases in runs for p in phases if p.name == name]
    per: dict[str, float] = {}
    for party in PARTIES:
        values = [p.cpu.get(party, 0.0) / (p.changes if per_change else p.messages) for p in phases]
        per[party] = round(statistics.median(values) * scale, 3)
    total = sum(per.values())
    per["total"] = round(total, 3)
    per["capacity_per_s"] = round((os.cpu_count() or 1) * scale / total) if total else 0.0
    return per


def _stats(values: list[float], digits: int = 0) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small phases, 3 runs")
    parser.add_argument(
        "--runs", type=int, help="end-to-end runs (default 5, 3 with --quick; 0: none)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile each phase")
    parser.add_argument("--top", type=int, default=25, help="functions per profile listing")
    parser.add_argument(
        "--statements", action="store_true", help="also time store_message in-process, per SQL"
    )
    args = parser.parse_args()
    single, batches = (500, 20) if args.quick else (3_000, 200)
    runs = args.runs if args.runs is not None else (3 if args.quick else 5)

    machine = {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "worker_concurrency": os.cpu_count(),
        "single_messages": single,
        "batch_messages": batches,
        "batch_size": BATCH_SIZE,
    }
    print(json.dumps(machine))
    template = services.create_migrated_template()
    try:
        results = []
        for number in range(runs):
            phases = one_run(template, number, single, batches)
            results.append(phases)
            for p in phases:
                print(
                    f"run {number + 1}/{runs} {p.name:6s} {p.messages:6d} msgs "
                    f"{p.changes:7d} changes {p.seconds:7.2f} s "
                    f"{p.messages_per_second:8.0f} msg/s {p.changes_per_second:8.0f} changes/s "
                    f"(sending {p.send_seconds:.2f} s) load {p.load} CPU s {p.cpu}",
                    flush=True,
                )
        if results:
            result: dict[str, Any] = {"machine": machine, "summary": summary(results)}
            result["phases"] = [[asdict(p) for p in phases] for phases in results]
            print(json.dumps(result["summary"], indent=2))
            out = RESULTS / f"ingest-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))
            print(f"written: {out.relative_to(ROOT)}")
        if args.statements:
            print(statements(template, batches, min(single, 1_000)))
        if args.profile:
            print(profile(template, single, batches, args.top))
    finally:
        services.drop_database(template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
