"""The chaos run's own services: an embedded PostgreSQL, a second RabbitMQ node, the Market
sandbox and the worker, each in a process of its own that the run can kill or restart.

Nothing here touches the machine's shared PostgreSQL (127.0.0.1:5432) or RabbitMQ node
(`rabbit@localhost`, 127.0.0.1:5672): the database lives in a temporary directory behind a Unix
socket, the broker is a node of its own (its own name, ports, data and log directories). Only
when no second node can run here does the run fall back to the shared broker, on a vhost of its
own, and then it never restarts that broker.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_RABBIT_URL = os.environ.get("STOCKSYNC_TEST_RABBIT_URL", "amqp://guest:guest@127.0.0.1:5672")


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")


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
        wait_for(lambda: port_open(self.port), timeout, f"RabbitMQ node {self.node}", 0.5)
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
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return 0


class SharedRabbitVhost:
    """The fallback: the machine's RabbitMQ with a vhost of our own. It is never restarted."""

    def __init__(self) -> None:
        self.vhost = f"stocksync-chaos-{uuid.uuid4().hex[:10]}"
        self.restarts = 0
        self.running = False

    @property
    def url(self) -> str:
        return f"{SYSTEM_RABBIT_URL}/{self.vhost}"

    def start(self) -> None:
        for args in (
            ["add_vhost", self.vhost],
            ["set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
        ):
            subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_vhost", self.vhost], check=False, capture_output=True
            )

    def restart(self) -> None:
        raise RuntimeError("the shared RabbitMQ is never restarted")

    def queue_depth(self, queue: str) -> int | None:
        result = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "-p", self.vhost, "name", "messages"],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return None if result.returncode else 0


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
        wait_for(lambda: port_open(self.port), 30, "the sandbox")

    def configure(self, **settings: Any) -> None:
        answer = requests.post(self.url + "/_sandbox/config", json=settings, timeout=30)
        answer.raise_for_status()

    def get(self, what: str) -> Any:
        answer = requests.get(f"{self.url}/_sandbox/{what}", timeout=60)
        answer.raise_for_status()
        return answer.json()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class Worker:
    """`celery -A worker worker -B` in a session of its own: SIGKILL reaches all its processes."""

    def __init__(self, env: dict[str, str], base: Path, concurrency: int) -> None:
        self.env = env
        self.base = base
        self.log_path = base / "worker.log"
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self, ready_timeout: float = 120) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            offset = log.tell()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker",
                    "worker",
                    "-B",
                    # A fresh beat schedule file each time: a SIGKILL may leave one half-written.
                    "-s",
                    str(self.base / f"beat-{self.starts}"),
                    "-l",
                    "info",
                    "-c",
                    str(self.concurrency),
                    "-n",
                    f"chaos-{self.starts}@%h",
                    "--without-gossip",
                    "--without-mingle",
                ],
                cwd=self.base,  # no .env of a developer is read
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited early; see {self.log_path}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return b" ready." in f.read()

        wait_for(ready, ready_timeout, "the worker to be ready")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group: the main process, its pool and beat."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
