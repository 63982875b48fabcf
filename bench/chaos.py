"""Fault-injection run: stocksync keeps the contract's promises while everything around it fails.

Run: .venv/bin/python bench/chaos.py [--quick] [--seconds N] [--seed S] [--keep]

The run brings its own services (see bench/chaos_services.py) and never touches the machine's
shared PostgreSQL or RabbitMQ: an embedded PostgreSQL in a temporary directory, a RabbitMQ node of
its own on free ports, the Market sandbox in its own process, and one `celery -A worker worker
-B` (worker with embedded beat). A producer that knows only the contract (bench/chaos_producer.py)
sends tens of thousands of changes (a few thousand with --quick), with duplicates and out-of-order
times, while:

- the worker's whole process group is SIGKILLed every few seconds and started again;
- the RabbitMQ node is stopped and started once, the PostgreSQL server restarted once;
- the sandbox answers 5xx and 420s, adds latency, and drops connections before and after it
  applied a request.

Then the faults stop, the run waits until every message is consumed and the outbox is drained,
and checks five promises (bench/chaos_checks.py). Exit 0 only when all of them pass. Everything
started is stopped at the end, on failure and Ctrl-C too; a failed run's logs are kept in
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

from chaos_checks import (  # noqa: E402
    Verdict,
    collect,
    figures,
    outbox_state,
    print_table,
    verdicts,
    worker_log_figures,
)
from chaos_producer import Producer  # noqa: E402
from chaos_services import (  # noqa: E402
    EmbeddedPostgres,
    RabbitNode,
    SandboxProcess,
    SharedRabbitVhost,
    Worker,
    remove_tree,
)

RESULTS = ROOT / "bench" / "results"
FAULTS = {
    "error_500_rate": 0.08,
    "error_420_rate": 0.03,
    "drop_before_rate": 0.04,
    "drop_after_rate": 0.04,
    "latency_ms": 20,
    "latency_jitter_ms": 200,
}
NO_FAULTS = dict.fromkeys(FAULTS, 0)


@dataclass
class ChaosConfig:
    seconds: float
    changes: int
    skus: int  # SKUs per key space (a campaign, or a warehouse group)
    rate_limit: int  # SKUs per campaign per minute, the worker's and the sandbox's
    drain_timeout: float
    seed: int
    kill_every: tuple[float, float] = (2.0, 6.0)
    campaigns: list[int] = field(default_factory=lambda: [1001, 1002, 2001, 3001])
    groups: list[list[int]] = field(default_factory=lambda: [[1001, 1002]])
    lease_seconds: float = 5.0
    drain_interval: float = 0.5
    concurrency: int = 2

    @classmethod
    def quick(cls, seed: int) -> ChaosConfig:
        return cls(
            seconds=25,
            changes=2_500,
            skus=150,
            rate_limit=800,
            drain_timeout=45,
            seed=seed,
            kill_every=(1.5, 4.0),
        )

    @classmethod
    def full(cls, seed: int) -> ChaosConfig:
        return cls(
            seconds=180, changes=40_000, skus=1_500, rate_limit=3_000, drain_timeout=300, seed=seed
        )


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _start_broker(base: Path, clock: Clock) -> RabbitNode | SharedRabbitVhost:
    node = RabbitNode(base)
    try:
        node.start()
        clock.say(f"RabbitMQ node {node.node} on 127.0.0.1:{node.port} (own data in {node.dir})")
        return node
    except Exception as exc:
        node.stop()
        shared = SharedRabbitVhost()
        shared.start()
        banner = "!" * 78
        print(
            f"{banner}\n!! A second RabbitMQ node could not run here ({exc}).\n"
            f"!! FALLBACK: the shared RabbitMQ, vhost {shared.vhost}. The broker restart is\n"
            f"!! SKIPPED: this run does not test surviving a broker restart.\n{banner}",
            flush=True,
        )
        return shared


def _worker_env(
    config: ChaosConfig, db: str, broker: str, sandbox: SandboxProcess
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    env.update(
        STOCKSYNC_DATABASE_URL=db,
        STOCKSYNC_BROKER_URL=broker,
        STOCKSYNC_MARKET_BASE_URL=sandbox.url,
        STOCKSYNC_MARKET_API_KEY=sandbox.api_key,
        STOCKSYNC_DRAIN_INTERVAL_SECONDS=str(config.drain_interval),
        STOCKSYNC_CLAIM_LEASE_SECONDS=str(config.lease_seconds),
        STOCKSYNC_WAREHOUSE_GROUPS=json.dumps(config.groups),
        STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE=str(config.rate_limit),
        PYTHONPATH=str(ROOT),
    )
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _chaos(
    config: ChaosConfig,
    clock: Clock,
    worker: Worker,
    broker: RabbitNode | SharedRabbitVhost,
    pg: EmbeddedPostgres,
    producer_thread: threading.Thread,
) -> dict[str, int]:
    """Kills and restarts until the time is up and the producer is done."""
    rng = random.Random(config.seed + 1)
    begun = time.monotonic()
    events = [(begun + 0.35 * config.seconds, "broker"), (begun + 0.65 * config.seconds, "pg")]
    next_kill = time.monotonic() + rng.uniform(*config.kill_every)
    hard_stop = begun + config.seconds * 2 + 60
    counts = {"self_deaths": 0}
    while time.monotonic() < hard_stop and (
        time.monotonic() < begun + config.seconds or producer_thread.is_alive() or events
    ):
        now = time.monotonic()
        if events and now >= events[0][0]:
            _, what = events.pop(0)
            if what == "broker" and isinstance(broker, RabbitNode):
                clock.say("restarting the RabbitMQ node (stop, start on the same data)")
                broker.restart()
                clock.say("RabbitMQ node back")
            elif what == "broker":
                clock.say("broker restart SKIPPED (shared RabbitMQ fallback)")
            else:
                clock.say("restarting PostgreSQL (pg_ctl restart -m fast)")
                pg.restart()
                clock.say("PostgreSQL back")
        elif not worker.alive():
            counts["self_deaths"] += 1
            clock.say("the worker died by itself: starting it again")
            worker.start()
        elif now >= next_kill:
            worker.kill()
            worker.start()
            next_kill = time.monotonic() + rng.uniform(*config.kill_every)
            if worker.kills % 5 == 0:
                clock.say(f"{worker.kills} SIGKILLs of the worker so far")
        time.sleep(0.1)
    return counts


def _wait_drained(
    config: ChaosConfig,
    clock: Clock,
    engine: Engine,
    producer: Producer,
    broker: RabbitNode | SharedRabbitVhost,
) -> bool:
    deadline = time.monotonic() + config.drain_timeout
    last_report = 0.0
    while time.monotonic() < deadline:
        logged, rejected, pending, claims = outbox_state(engine)
        complete = logged >= len(producer.ledger.valid) and rejected >= len(producer.ledger.invalid)
        if complete and pending == 0 and claims == 0:
            depth = broker.queue_depth("stocks.changes")
            if depth == 0:
                clock.say(f"drained: {logged} changes logged, no pending key, no live claim")
                return True
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            clock.say(f"draining: {logged} logged, {pending} pending keys, {claims} live claims")
        time.sleep(0.5)
    clock.say(f"NOT drained after {config.drain_timeout:.0f}s")
    return False


def run(config: ChaosConfig, keep: bool = False) -> int:
    from stocksync.migrations_runner import upgrade_to_head
    from worker.database import make_engine

    clock = Clock()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    base = Path(tempfile.mkdtemp(prefix="ssc-", dir="/tmp"))  # short: a Unix socket lives here
    base.chmod(0o755)  # the pgserver and rabbitmq users must reach their directories
    clock.say(f"chaos run: {asdict(config)}; services in {base}")
    passed = False
    with ExitStack() as stack:
        stack.callback(lambda: None if keep else remove_tree(base))
        stack.callback(lambda: None if passed else _keep_logs(base, stamp, clock))

        pg = EmbeddedPostgres(base)
        stack.callback(pg.stop)
        url = pg.start()
        upgrade_to_head(url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        clock.say(f"PostgreSQL (embedded, pgserver) at {url}")

        broker = _start_broker(base, clock)
        stack.callback(broker.stop)

        sandbox = SandboxProcess(base / "sandbox.log", config.seed, config.rate_limit, "chaos-key")
        stack.callback(sandbox.stop)
        sandbox.start()
        sandbox.configure(**FAULTS)
        clock.say(f"sandbox at {sandbox.url}, faults {FAULTS}, limit {config.rate_limit}/min")

        worker = Worker(_worker_env(config, url, broker.url, sandbox), base, config.concurrency)
        stack.callback(worker.stop)
        worker.start()
        clock.say("worker with beat ready")

        producer = Producer(
            broker.url, config.campaigns, config.groups, config.skus, config.seed, datetime.now(UTC)
        )
        stack.callback(producer.close)
        stack.callback(producer.stop.set)
        thread = threading.Thread(
            target=producer.run,
            args=(config.changes, config.seconds, 120.0),
            name="producer",
            daemon=True,
        )
        chaos_start = time.monotonic()
        thread.start()
        counts = _chaos(config, clock, worker, broker, pg, thread)
        chaos_seconds = time.monotonic() - chaos_start
        clock.say(
            f"chaos over after {chaos_seconds:.0f}s: {producer.ledger.changes_sent} changes "
            f"sent, {worker.kills} kills; faults off"
        )
        sandbox.configure(**NO_FAULTS)
        drain_start = time.monotonic()
        drained = _wait_drained(config, clock, engine, producer, broker)
        drain_seconds = time.monotonic() - drain_start
        worker.stop()

        facts = collect(engine, sandbox.get("state"), sandbox.get("stats"))
        results = verdicts(producer.ledger, facts, config.groups, config.rate_limit)
        figs = figures(producer.ledger, facts)
        figs.update(
            {
                "worker SIGKILLs (process group)": worker.kills,
                "worker deaths on its own": counts["self_deaths"],
                "RabbitMQ restarts": broker.restarts,
                "PostgreSQL restarts": pg.restarts,
                "chaos phase (s)": round(chaos_seconds, 1),
                "drain after faults off (s)": round(drain_seconds, 1)
                if drained
                else f"NOT drained within {config.drain_timeout:.0f}s",
                "total duration (s)": round(time.monotonic() - clock.start, 1),
            }
        )
        figs.update(worker_log_figures(worker.log_path))
        if isinstance(broker, SharedRabbitVhost):
            figs["BROKER RESTART"] = "SKIPPED (fallback to the shared RabbitMQ)"
        print_table(results, figs)
        passed = all(v.ok for v in results)
        _save(stamp, config, results, figs)
        print("RESULT: " + ("PASS" if passed else "FAIL"), flush=True)
    clock.say("everything stopped")
    return 0 if passed else 1


def _keep_logs(base: Path, stamp: str, clock: Clock) -> None:
    target = RESULTS / f"chaos-{stamp}-logs"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("worker.log", "sandbox.log"):
        if (base / name).exists():
            shutil.copy(base / name, target / name)
    clock.say(f"logs kept in {target}")


def _save(stamp: str, config: ChaosConfig, results: list[Verdict], figs: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": asdict(config),
        "verdicts": [asdict(v) for v in results],
        "figures": figs,
    }
    (RESULTS / f"chaos-{stamp}.json").write_text(json.dumps(payload, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few thousand changes, ~30 s")
    parser.add_argument("--seconds", type=float, help="length of the chaos phase")
    parser.add_argument("--seed", type=int, default=1, help="seed of the traffic and the faults")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    config = ChaosConfig.quick(args.seed) if args.quick else ChaosConfig.full(args.seed)
    if args.seconds is not None:
        config.changes = max(1, int(config.changes * args.seconds / config.seconds))
        config.seconds = args.seconds
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(config, keep=args.keep)
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
