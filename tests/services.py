"""Real services for tests: fresh PostgreSQL databases from a migrated template, RabbitMQ vhosts,
real `celery` worker processes, and the smoke run's own PostgreSQL server, RabbitMQ node and
sandbox process. Nothing here skips: a missing service fails the test.

The process primitives (free port, ready-poller, clean environment, process-group stop) are
`stocksync.processes`, the ones `stocksync demo` uses; this module is the one test harness."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, make_url, text

from stocksync.processes import (
    ProcessExited,
    clean_env,
    free_port,
    kill_process_group,
    port_open,
    stop_process_group,
    wait_for,
    wait_for_log_line,
)

__all__ = ["clean_env", "free_port", "kill_process_group", "port_open", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get(
    "STOCKSYNC_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RABBIT_URL = os.environ.get("STOCKSYNC_TEST_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672")


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def url_for_database(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def admin_execute(sql: str) -> None:
    with psycopg.connect(_libpq(ADMIN_URL), autocommit=True) as conn:
        conn.execute(sql)


def migrate(url: str) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


def create_migrated_template() -> str:
    name = f"stocksync_tpl_{uuid.uuid4().hex[:10]}"
    admin_execute(f'CREATE DATABASE "{name}"')
    migrate(url_for_database(name))
    return name


def create_database_from(template: str) -> str:
    name = f"stocksync_t_{uuid.uuid4().hex[:12]}"
    admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(name: str) -> None:
    admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def shift_database_clock(engine: Engine, database_url: str) -> None:
    """Makes `clock_timestamp()` steppable in this test database: a function of that name in a
    schema searched before pg_catalog, adding `clockshift.shift.by` (0 until a test sets it).
    It affects connections made afterwards (the workers'), as a stepped host clock would."""
    name = make_url(database_url).database
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA clockshift"))
        conn.execute(text("CREATE TABLE clockshift.shift (by interval NOT NULL)"))
        conn.execute(text("INSERT INTO clockshift.shift VALUES ('0 s')"))
        conn.execute(
            text("""
                CREATE FUNCTION clockshift.clock_timestamp() RETURNS timestamptz
                LANGUAGE sql VOLATILE
                AS $$ SELECT pg_catalog.clock_timestamp() + (SELECT by FROM clockshift.shift) $$
            """)
        )
        conn.execute(
            text(f'ALTER DATABASE "{name}" SET search_path = clockshift, pg_catalog, public')
        )


def _rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=check, capture_output=True, text=True, timeout=60
    )


def _add_vhost(vhost: str) -> None:
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


@contextmanager
def rabbit_vhost(prefix: str = "stocksync-test") -> Iterator[str]:
    """A RabbitMQ vhost of its own, so parallel test runs never take each other's messages."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:10]}"
    _add_vhost(vhost)
    try:
        yield f"{RABBIT_URL}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost, check=False)


def _messages_in(listing: str, queue: str) -> int:
    """The `messages` column of `queue` in a `list_queues name messages` listing, 0 if absent."""
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    return 0


class WorkerProcess:
    """A real `celery -A worker worker` in a session of its own, its output in a log file; kill
    and stop reach the whole process group (main process, pool children, embedded beat)."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        extra_args: tuple[str, ...] = (),
        cwd: Path = ROOT,
        beat_schedule: Path | None = None,
        command_prefix: tuple[str, ...] = (),
    ):
        # `command_prefix` runs the worker through another command that ends by exec'ing it (e.g.
        # `ip netns exec NAME`), so the process and its group stay the worker's.
        self.command_prefix = command_prefix
        self.env = env
        self.log_path = log_path
        self.extra_args = extra_args
        self.cwd = cwd
        self.beat_schedule = beat_schedule
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self, ready_timeout: float = 60.0) -> WorkerProcess:
        """Starts the worker and returns once its log says ` ready.` (RuntimeError if it exits)."""
        self.starts += 1
        # An embedded beat gets a fresh schedule file each start: a SIGKILL may leave one
        # half-written.
        beat = ("-B", "-s", f"{self.beat_schedule}-{self.starts}") if self.beat_schedule else ()
        with self.log_path.open("ab") as log:
            start_offset = log.tell()
            self.process = subprocess.Popen(
                [
                    *self.command_prefix,
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker",
                    "worker",
                    "-l",
                    "info",
                    "-n",
                    f"test-{uuid.uuid4().hex[:8]}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    *beat,
                    *self.extra_args,
                ],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for_log_line(self.process, self.log_path, start_offset, ready_timeout)
        except ProcessExited:
            raise RuntimeError(f"worker exited early:\n{self.log_text()[-3000:]}") from None
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"worker not ready:\n{self.log_text()[-3000:]}") from None
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole process group: the main process and its pool children."""
        if self.alive():
            assert self.process is not None
            kill_process_group(self.process)
            self.kills += 1

    def stop(self) -> None:
        """SIGTERM to the process group (a warm shutdown), SIGKILL after 30 s."""
        if self.process is not None:
            stop_process_group(self.process)


def service_env(database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    """A clean environment for a child process: no STOCKSYNC_* leaks in from the caller."""
    env = clean_env(
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_BROKER_URL=broker_url,
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def faketime_env(offset: str) -> dict[str, str]:
    """libfaketime on one process: its host clock (realtime and monotonic) moved by `offset`
    (`+30s`, `-20s`). Fails, never skips, where libfaketime is missing."""
    library = next(
        (
            p
            for p in (
                Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
                Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
            )
            if p.exists()
        ),
        None,
    )
    if library is None or shutil.which("faketime") is None:
        raise RuntimeError(
            "libfaketime is missing: apt-get install -y faketime (.ci/run installs it)"
        )
    return {"LD_PRELOAD": str(library), "FAKETIME": offset, "FAKETIME_NO_CACHE": "1"}


@contextmanager
def running_worker(
    database_url: str,
    broker_url: str,
    log_path: Path,
    *,
    beat: bool = False,
    **env: str,
) -> Iterator[WorkerProcess]:
    """A real worker (with `beat`, an embedded beat) on the test's database and broker."""
    schedule = log_path.with_suffix(".beat") if beat else None
    worker = WorkerProcess(
        service_env(database_url, broker_url, **env), log_path, beat_schedule=schedule
    )
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


# --- the smoke run's own services: restartable, and never the machine's shared ones ---------


class EmbeddedPostgres:
    """pgserver's PostgreSQL in `base/pgdata`, reached by its Unix socket; restartable."""

    def __init__(self, base: Path) -> None:
        self.pgdata = base / "pgdata"
        self.url = ""
        # pgserver runs the server as the `pgserver` user when we are root.
        self.user = "pgserver" if os.geteuid() == 0 else None
        self.restarts = 0

    def start(self) -> str:
        # The project's own embedded start (worker.embedded_postgres), in a child process so that
        # pgserver's exit hooks stay there; the server is left running for us.
        code = (
            "import sys; from pathlib import Path; "
            "from worker.embedded_postgres import embedded_database_url; "
            "print(embedded_database_url(Path(sys.argv[1])))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(self.pgdata.parent)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.url = out.stdout.strip().splitlines()[-1]
        return self.url

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR as root
            warnings.simplefilter("ignore")
            from pgserver._commands import POSTGRES_BIN_PATH

        return subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), *args],
            user=self.user,
            check=check,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def restart(self) -> None:
        """A fast restart: open connections are cut; pg_ctl reuses the socket options."""
        self._pg_ctl("-w", "-m", "fast", "-l", str(self.pgdata / "log"), "restart")
        self.restarts += 1

    def stop(self) -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        if self._pg_ctl("-w", "-m", "fast", "stop", check=False).returncode == 0:
            return
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)


class RabbitNode:
    """A RabbitMQ node of our own (`chaos-…@localhost`) on free ports, data in `base/rabbit`."""

    restartable = True

    def __init__(self, base: Path) -> None:
        self.dir = base / "rabbit"
        self.node = f"chaos-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.restarts = 0
        self.running = False

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            # Our own env and config files: the machine's name the shared node and its port.
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq.conf"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, timeout: float = 90) -> None:
        if self.running:
            return
        if not self.dir.exists():
            for sub in ("mnesia", "log"):
                (self.dir / sub).mkdir(parents=True)
            (self.dir / "enabled_plugins").write_text("[].\n")
            (self.dir / "rabbitmq.conf").write_text("")
            (self.dir / "rabbitmq-env.conf").write_text("")
            if os.geteuid() == 0:  # the server script runs the node as the rabbitmq user
                owner = pwd.getpwnam("rabbitmq")
                for path in [self.dir, *self.dir.rglob("*")]:
                    os.chown(path, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.running = True
        wait_for(f"RabbitMQ node {self.node}", lambda: port_open(self.port), timeout, 0.5)
        result = self._ctl("await_startup", "--timeout", str(int(timeout)))
        if result.returncode != 0:
            raise RuntimeError(f"{self.node} did not start: {result.stderr[-2000:]}")

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        if self._ctl("stop").returncode == 0:
            return
        # The CLI could not reach it: its pid file names the process to end.
        with contextlib.suppress(OSError, ValueError):
            pid_file = self.dir / "mnesia" / f"{self.node}.pid"
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)

    def restart(self) -> None:
        """The whole node stopped and started again on the same data: only durable queues and
        persistent messages survive. (`stop_app`/`start_app` cannot be used on this RabbitMQ:
        start_app fails with eaddrinuse on its own listener, see BENCHMARKS.md.)"""
        self.stop()
        self.start()
        self.restarts += 1

    def queue_depth(self, queue: str) -> int | None:
        """Messages ready plus unacknowledged in `queue`, or None when the node cannot tell."""
        result = self._ctl("-q", "list_queues", "name", "messages", "--no-table-headers")
        if result.returncode != 0:
            return None
        return _messages_in(result.stdout, queue)


class SharedRabbitVhost:
    """The fallback: the machine's RabbitMQ with a vhost of our own. It is never restarted."""

    restartable = False

    def __init__(self) -> None:
        self._vhost = rabbit_vhost("stocksync-chaos")
        self.url = ""
        self.restarts = 0

    @property
    def vhost(self) -> str:
        return self.url.rsplit("/", 1)[1]

    def start(self) -> None:
        self.url = self._vhost.__enter__()

    def stop(self) -> None:
        if self.url:
            self._vhost.__exit__(None, None, None)

    def restart(self) -> None:
        raise RuntimeError("the shared RabbitMQ is never restarted")

    def queue_depth(self, queue: str) -> int | None:
        result = _rabbitmqctl("list_queues", "-p", self.vhost, "name", "messages", check=False)
        return None if result.returncode else _messages_in(result.stdout, queue)


class SandboxProcess:
    """`python -m sandbox` in its own process, driven through its `/_sandbox/*` endpoints."""

    def __init__(self, log: Path, seed: int, rate_limit: int, api_key: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self._args = ["--seed", str(seed), "--rate-limit", str(rate_limit), "--api-key", api_key]
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sandbox", "--port", str(self.port), *self._args],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_for("the sandbox", lambda: port_open(self.port), 30, 0.2)

    def configure(self, **settings: Any) -> None:
        answer = requests.post(self.url + "/_sandbox/config", json=settings, timeout=30)
        answer.raise_for_status()

    def get(self, what: str) -> Any:
        answer = requests.get(f"{self.url}/_sandbox/{what}", timeout=60)
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, 15)
