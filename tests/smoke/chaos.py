"""The chaos run: stocksync keeps the contract's promises while everything around it fails.

The run's services are its own (tests/smoke/conftest.py, from tests/services.py): an embedded
PostgreSQL in a temporary directory, a RabbitMQ node on free ports, the Market sandbox in its own
process, and one `celery -A worker worker -B` (worker with embedded beat). A producer that knows
only the contract (tests/smoke/producer.py) sends thousands of changes, with duplicates and
out-of-order times, while:

- the worker's whole process group is SIGKILLed every few seconds and started again;
- the RabbitMQ node is stopped and started once, the PostgreSQL server restarted once;
- the sandbox answers 5xx and 420s, adds latency, and drops connections before and after it
  applied a request.

Then the faults stop, the run waits until every message is consumed and the outbox is drained,
and collects what the five checks (tests/smoke/checks.py) judge.

Length: a short run by default (25 s of chaos, what CI runs); `STOCKSYNC_CHAOS_SECONDS=180` runs
the full one (40,000 changes over 180 s), `STOCKSYNC_CHAOS_SEED` picks the traffic and faults.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine

from tests.services import EmbeddedPostgres, SandboxProcess, WorkerProcess
from tests.smoke.checks import (
    Verdict,
    collect,
    figures,
    format_table,
    outbox_state,
    verdicts,
    worker_log_figures,
)
from tests.smoke.producer import QUEUE, Producer

SECONDS_VARIABLE = "STOCKSYNC_CHAOS_SECONDS"
SEED_VARIABLE = "STOCKSYNC_CHAOS_SEED"
FAULTS = {
    "error_500_rate": 0.08,
    "error_420_rate": 0.03,
    "drop_before_rate": 0.04,
    "drop_after_rate": 0.04,
    "latency_ms": 20,
    "latency_jitter_ms": 200,
}
NO_FAULTS = dict.fromkeys(FAULTS, 0)


class Broker(Protocol):
    """The run's broker: its own RabbitMQ node, or the shared one's vhost (never restarted)."""

    restarts: int
    restartable: bool

    @property
    def url(self) -> str: ...
    def restart(self) -> None: ...
    def queue_depth(self, queue: str) -> int | None: ...


@dataclass
class ChaosConfig:
    seconds: float
    changes: int
    skus: int  # SKUs per key space (a campaign, or a warehouse group)
    rate_limit: int  # SKUs per campaign per minute, the worker's and the sandbox's
    drain_timeout: float
    seed: int
    kill_every: tuple[float, float] = (2.0, 6.0)
    # The chaos goes on past `seconds` until the worker was killed this often (a loaded machine
    # restarts the worker slowly), within the run's hard stop.
    min_kills: int = 3
    campaigns: list[int] = field(default_factory=lambda: [1001, 1002, 2001, 3001])
    groups: list[list[int]] = field(default_factory=lambda: [[1001, 1002]])
    lease_seconds: float = 5.0
    drain_interval: float = 0.5
    concurrency: int = 2

    @classmethod
    def quick(cls, seed: int) -> ChaosConfig:
        """The short run CI makes: a few thousand changes, about a minute and a half in all."""
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
    def full(cls, seed: int, seconds: float = 180) -> ChaosConfig:
        """The long run: 40,000 changes over 180 s, scaled to `seconds`."""
        return cls(
            seconds=seconds,
            changes=max(1, int(40_000 * seconds / 180)),
            skus=1_500,
            rate_limit=3_000,
            drain_timeout=300,
            seed=seed,
        )

    @classmethod
    def from_environment(cls) -> ChaosConfig:
        """The full run for STOCKSYNC_CHAOS_SECONDS=N, else the quick one; seed 7 unless given."""
        seed = int(os.environ.get(SEED_VARIABLE, "7"))
        seconds = os.environ.get(SECONDS_VARIABLE)
        return cls.full(seed, float(seconds)) if seconds else cls.quick(seed)

    def worker_settings(self) -> dict[str, str]:
        """The worker's STOCKSYNC_* settings for this run (besides database, broker, Market)."""
        return {
            "STOCKSYNC_DRAIN_INTERVAL_SECONDS": str(self.drain_interval),
            "STOCKSYNC_CLAIM_LEASE_SECONDS": str(self.lease_seconds),
            "STOCKSYNC_WAREHOUSE_GROUPS": json.dumps(self.groups),
            "STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE": str(self.rate_limit),
        }

    def longest_seconds(self) -> int:
        """An upper bound of the whole run, services included: the test's timeout."""
        return int(self.seconds * 2 + 60 + self.drain_timeout + 300)


@dataclass
class ChaosResult:
    """What one run found: the five verdicts by number, the figures, what the faults did."""

    verdicts: dict[int, Verdict]
    figures: dict[str, Any]
    worker_kills: int
    broker_restarts: int
    postgres_restarts: int
    shared_broker: bool
    drained: bool

    def report(self) -> str:
        return format_table(list(self.verdicts.values()), self.figures)

    def save(self, path: Path, config: ChaosConfig) -> None:
        payload = {
            "config": asdict(config),
            "verdicts": [asdict(v) for v in self.verdicts.values()],
            "figures": self.figures,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))


def _chaos(
    config: ChaosConfig,
    say: Callable[[str], None],
    worker: WorkerProcess,
    broker: Broker,
    pg: EmbeddedPostgres,
    producer_thread: threading.Thread,
) -> int:
    """Kills and restarts until the time is up and the producer is done; the worker's deaths on
    its own are counted and returned."""
    rng = random.Random(config.seed + 1)
    begun = time.monotonic()
    events = [(begun + 0.35 * config.seconds, "broker"), (begun + 0.65 * config.seconds, "pg")]
    next_kill = time.monotonic() + rng.uniform(*config.kill_every)
    hard_stop = begun + config.seconds * 2 + 60
    self_deaths = 0
    while time.monotonic() < hard_stop and (
        time.monotonic() < begun + config.seconds
        or producer_thread.is_alive()
        or events
        or worker.kills < config.min_kills
    ):
        now = time.monotonic()
        if events and now >= events[0][0]:
            _, what = events.pop(0)
            if what == "broker" and broker.restartable:
                say("restarting the RabbitMQ node (stop, start on the same data)")
                broker.restart()
                say("RabbitMQ node back")
            elif what == "broker":
                say("broker restart SKIPPED (shared RabbitMQ fallback)")
            else:
                say("restarting PostgreSQL (pg_ctl restart -m fast)")
                pg.restart()
                say("PostgreSQL back")
        elif not worker.alive():
            self_deaths += 1
            say("the worker died by itself: starting it again")
            worker.start(ready_timeout=120)
        elif now >= next_kill:
            worker.kill()
            worker.start(ready_timeout=120)
            next_kill = time.monotonic() + rng.uniform(*config.kill_every)
            if worker.kills % 5 == 0:
                say(f"{worker.kills} SIGKILLs of the worker so far")
        time.sleep(0.1)
    return self_deaths


def _wait_drained(
    config: ChaosConfig,
    say: Callable[[str], None],
    engine: Engine,
    producer: Producer,
    broker: Broker,
) -> bool:
    deadline = time.monotonic() + config.drain_timeout
    last_report = 0.0
    while time.monotonic() < deadline:
        logged, rejected, pending, claims = outbox_state(engine)
        complete = logged >= len(producer.ledger.valid) and rejected >= len(producer.ledger.invalid)
        if complete and pending == 0 and claims == 0 and broker.queue_depth(QUEUE) == 0:
            say(f"drained: {logged} changes logged, no pending key, no live claim")
            return True
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            say(f"draining: {logged} logged, {pending} pending keys, {claims} live claims")
        time.sleep(0.5)
    say(f"NOT drained after {config.drain_timeout:.0f}s")
    return False


def run_chaos(
    config: ChaosConfig,
    say: Callable[[str], None],
    *,
    engine: Engine,
    pg: EmbeddedPostgres,
    broker: Broker,
    sandbox: SandboxProcess,
    worker: WorkerProcess,
) -> ChaosResult:
    """Traffic under faults, then faults off, the drain, and the facts the checks judge."""
    started = time.monotonic()
    sandbox.configure(**FAULTS)
    say(f"sandbox faults {FAULTS}, limit {config.rate_limit}/min")
    producer = Producer(
        broker.url, config.campaigns, config.groups, config.skus, config.seed, datetime.now(UTC)
    )
    thread = threading.Thread(
        target=producer.run,
        args=(config.changes, config.seconds, 120.0),
        name="producer",
        daemon=True,
    )
    try:
        thread.start()
        self_deaths = _chaos(config, say, worker, broker, pg, thread)
        chaos_seconds = time.monotonic() - started
        say(
            f"chaos over after {chaos_seconds:.0f}s: {producer.ledger.changes_sent} changes "
            f"sent, {worker.kills} kills; faults off"
        )
        sandbox.configure(**NO_FAULTS)
        drain_start = time.monotonic()
        drained = _wait_drained(config, say, engine, producer, broker)
        drain_seconds = time.monotonic() - drain_start
    finally:
        producer.stop.set()
        thread.join(timeout=30)
        producer.close()
    worker.stop()

    facts = collect(engine, sandbox.get("state"), sandbox.get("stats"))
    results = verdicts(producer.ledger, facts, config.groups, config.rate_limit)
    figs = figures(producer.ledger, facts)
    figs.update(
        {
            "worker SIGKILLs (process group)": worker.kills,
            "worker deaths on its own": self_deaths,
            "RabbitMQ restarts": broker.restarts,
            "PostgreSQL restarts": pg.restarts,
            "chaos phase (s)": round(chaos_seconds, 1),
            "drain after faults off (s)": round(drain_seconds, 1)
            if drained
            else f"NOT drained within {config.drain_timeout:.0f}s",
            "run duration (s)": round(time.monotonic() - started, 1),
        }
    )
    figs.update(worker_log_figures(worker.log_path))
    if not broker.restartable:
        figs["BROKER RESTART"] = "SKIPPED (fallback to the shared RabbitMQ)"
    return ChaosResult(
        verdicts={int(v.name.split()[0]): v for v in results},
        figures=figs,
        worker_kills=worker.kills,
        broker_restarts=broker.restarts,
        postgres_restarts=pg.restarts,
        shared_broker=not broker.restartable,
        drained=drained,
    )
