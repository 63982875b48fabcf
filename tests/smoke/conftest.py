"""The smoke run's own services, one of each per module: a PostgreSQL server (embedded), a
RabbitMQ node, the sandbox process and the worker process, and the chaos run over them once.

Nothing here touches the machine's shared PostgreSQL (127.0.0.1:5432) or RabbitMQ node
(`rabbit@localhost`, 127.0.0.1:5672): the database lives in a temporary directory behind a Unix
socket, the broker is a node of its own (its own name, ports, data and log directories). Only
when no second node can run here does the run fall back to the shared broker, on a vhost of its
own, and then it never restarts that broker (and the restart check fails).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from stocksync.migrations_runner import upgrade_to_head
from tests.services import (
    ROOT,
    EmbeddedPostgres,
    RabbitNode,
    SandboxProcess,
    SharedRabbitVhost,
    WorkerProcess,
    service_env,
)
from tests.smoke.chaos import Broker, ChaosConfig, ChaosResult, run_chaos
from worker.database import make_engine

RESULTS = ROOT / "tests" / "smoke" / "results"
API_KEY = "chaos-key"


class Clock:
    """Progress lines with the seconds since the run's start (pytest shows them on failure)."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)


@pytest.fixture(scope="module")
def chaos_config() -> ChaosConfig:
    return ChaosConfig.from_environment()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def services_dir(clock: Clock) -> Iterator[Path]:
    """A short temporary directory (a Unix socket lives in it) that the service users reach;
    the worker's and the sandbox's logs are copied to tests/smoke/results/ before it goes."""
    base = Path(tempfile.mkdtemp(prefix="ssc-", dir="/tmp"))
    base.chmod(0o755)  # the pgserver and rabbitmq users must reach their directories
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    yield base
    target = RESULTS / f"chaos-{stamp}-logs"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("worker.log", "sandbox.log"):
        if (base / name).exists():
            shutil.copy(base / name, target / name)
    clock.say(f"logs kept in {target}")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres(services_dir: Path, clock: Clock) -> Iterator[EmbeddedPostgres]:
    """An embedded PostgreSQL server of the run's own, migrated; restartable."""
    pg = EmbeddedPostgres(services_dir)
    try:
        url = pg.start()
        upgrade_to_head(url)
        clock.say(f"PostgreSQL (embedded, pgserver) at {url}")
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def own_engine(own_postgres: EmbeddedPostgres) -> Iterator[Engine]:
    engine = make_engine(own_postgres.url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def own_rabbit(services_dir: Path, clock: Clock) -> Iterator[Broker]:
    """A RabbitMQ node of the run's own; the shared broker's vhost only when none can run."""
    node = RabbitNode(services_dir)
    broker: RabbitNode | SharedRabbitVhost = node
    try:
        node.start()
        clock.say(f"RabbitMQ node {node.node} on 127.0.0.1:{node.port} (own data in {node.dir})")
    except Exception as exc:
        node.stop()
        broker = SharedRabbitVhost()
        broker.start()
        clock.say(
            f"!! A second RabbitMQ node could not run here ({exc}). FALLBACK: the shared "
            f"RabbitMQ, vhost {broker.vhost}; the broker restart is SKIPPED."
        )
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def sandbox_process(
    services_dir: Path, chaos_config: ChaosConfig, clock: Clock
) -> Iterator[SandboxProcess]:
    """`python -m sandbox` in a process of its own, with the run's rate limit."""
    sandbox = SandboxProcess(
        services_dir / "sandbox.log", chaos_config.seed, chaos_config.rate_limit, API_KEY
    )
    try:
        sandbox.start()
        clock.say(f"sandbox at {sandbox.url}")
        yield sandbox
    finally:
        sandbox.stop()


@pytest.fixture(scope="module")
def chaos_worker(
    services_dir: Path,
    chaos_config: ChaosConfig,
    own_postgres: EmbeddedPostgres,
    own_rabbit: Broker,
    sandbox_process: SandboxProcess,
    clock: Clock,
) -> Iterator[WorkerProcess]:
    """`celery -A worker worker -B` in the services directory (no developer's .env is read)."""
    env = service_env(
        own_postgres.url,
        own_rabbit.url,
        STOCKSYNC_MARKET_BASE_URL=sandbox_process.url,
        STOCKSYNC_MARKET_API_KEY=sandbox_process.api_key,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **chaos_config.worker_settings(),
    )
    worker = WorkerProcess(
        env,
        services_dir / "worker.log",
        extra_args=("-c", str(chaos_config.concurrency)),
        cwd=services_dir,
        beat_schedule=services_dir / "beat",
    )
    try:
        worker.start(ready_timeout=120)
        clock.say("worker with beat ready")
        yield worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def chaos_run(
    chaos_config: ChaosConfig,
    clock: Clock,
    own_engine: Engine,
    own_postgres: EmbeddedPostgres,
    own_rabbit: Broker,
    sandbox_process: SandboxProcess,
    chaos_worker: WorkerProcess,
) -> ChaosResult:
    """The chaos run, once for all the module's checks; its table goes to stdout and its
    verdicts and figures to tests/smoke/results/chaos-<time>.json."""
    clock.say(f"chaos run: {chaos_config}")
    result = run_chaos(
        chaos_config,
        clock.say,
        engine=own_engine,
        pg=own_postgres,
        broker=own_rabbit,
        sandbox=sandbox_process,
        worker=chaos_worker,
    )
    print(result.report(), flush=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    result.save(RESULTS / f"chaos-{stamp}.json", chaos_config)
    return result
