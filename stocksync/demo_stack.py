"""The demo's private services: embedded PostgreSQL, the Market sandbox, a worker with beat.

`DemoServices` starts them in order and stops them in reverse, on success, failure, Ctrl-C or
SIGTERM alike: nothing of a demo outlives it, and a throw-away data directory is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from sqlalchemy import text

from sandbox.server import MarketSandbox
from stocksync.migrations_runner import upgrade_to_head
from stocksync.processes import (
    ProcessExited,
    clean_env,
    stop_process_group,
    wait_for_log_line,
    with_project_on_path,
)
from worker.database import make_engine

DRAIN_INTERVAL_SECONDS = 1.0
WORKER_READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DemoError(RuntimeError):
    """The demo could not set itself up; the message says what to do."""


def _say(message: str) -> None:
    print(message, flush=True)


def _stop_embedded_postgres(pgdata: Path) -> bool:
    """Stops the server this process started in `pgdata` (unless another process holds it)."""
    from pgserver.postgres_server import PostgresServer

    server = PostgresServer._instances.get(pgdata.resolve())
    if server is not None:
        # The handle embedded_database_url made: its cleanup stops the server when this process
        # is the last holder, as atexit would, but now, before the data directory goes.
        server.cleanup()
        return True
    # No handle: the start was interrupted, perhaps after pg_ctl had launched the postmaster.
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # PostgreSQL's fast shutdown
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
    return True


def _holds_changes(url: str) -> bool:
    """True when the database has accepted a change already."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return bool(conn.execute(text("SELECT EXISTS (SELECT 1 FROM change_log)")).scalar())
    finally:
        engine.dispose()


class DemoServices:
    """Context manager: data dir, PostgreSQL (migrated), sandbox and worker, torn down on exit."""

    def __init__(
        self,
        data_dir: Path | None,
        groups: Sequence[Sequence[int]],
        concurrency: int,
        say: Callable[[str], None] = _say,
    ) -> None:
        self._given_data_dir = data_dir
        self._groups = [list(g) for g in groups]
        self._concurrency = concurrency
        self._say = say
        self._stack = ExitStack()
        self.data_dir = Path()
        self.database_url = ""
        self.sandbox = MarketSandbox(api_keys=[f"demo-{secrets.token_hex(8)}"])
        self.worker: subprocess.Popen[bytes] | None = None

    @property
    def worker_log(self) -> Path:
        """The worker's (and beat's) output."""
        return self.data_dir / "worker.log"

    @property
    def broker_url(self) -> str:
        """The default broker: kombu's SQLAlchemy transport on the demo's own database."""
        return "sqla+" + self.database_url

    def __enter__(self) -> DemoServices:
        """Starts everything; a failure (or Ctrl-C) part-way stops what had started."""
        try:
            self._start_database()
            self._start_sandbox()
            self._start_worker()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the worker, the sandbox and PostgreSQL; removes a throw-away data directory."""
        self._teardown()

    def _teardown(self) -> None:
        # A second Ctrl-C or a SIGTERM during the teardown must not leave half of it undone.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
        try:
            self._stack.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # --- PostgreSQL -------------------------------------------------------------------------

    def _start_database(self) -> None:
        if self._given_data_dir is None:
            # Short and fresh: the server's socket lives in it (Unix socket paths are short).
            self.data_dir = Path(tempfile.mkdtemp(prefix="stocksync-demo-"))
            self._stack.callback(self._remove_data_dir)
        else:
            self.data_dir = self._given_data_dir.expanduser().resolve()
            if (self.data_dir / "pgdata" / "postmaster.pid").exists():
                raise DemoError(
                    f"an embedded PostgreSQL already runs in {self.data_dir} (a `stocksync run`?);"
                    " the demo needs one of its own: stop it or give another --data-dir"
                )
        from worker.embedded_postgres import embedded_database_url

        self._say(f"  PostgreSQL  embedded (pgserver), data in {self.data_dir}")
        # Registered first: an interrupted start may leave a server without a handle here.
        self._stack.callback(self._stop_database)
        self.database_url = embedded_database_url(self.data_dir, stop_on_exit=True)
        # Alembic's per-revision INFO lines are noise here; its warnings and errors are not.
        alembic_log = logging.getLogger("alembic")
        if not alembic_log.handlers or all(
            isinstance(h, logging.NullHandler) for h in alembic_log.handlers
        ):
            alembic_log.addHandler(logging.StreamHandler())
            alembic_log.setLevel(logging.WARNING)
        self._say(f"  migrations  at head, revision {upgrade_to_head(self.database_url)}")
        if self._given_data_dir is not None and _holds_changes(self.database_url):
            raise DemoError(
                f"{self.data_dir} already holds changes (an earlier demo?); the demo proves its "
                "result on an empty database: give another --data-dir"
            )

    def _stop_database(self) -> None:
        if _stop_embedded_postgres(self.data_dir / "pgdata"):
            self._say("  stopped PostgreSQL")

    def _remove_data_dir(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self._say(f"  removed {self.data_dir}")

    # --- the Market sandbox -----------------------------------------------------------------

    def _start_sandbox(self) -> None:
        self.sandbox.start()
        self._stack.callback(self._stop_sandbox)
        self._say(f"  Market      sandbox at {self.sandbox.url} (Api-Key required)")

    def _stop_sandbox(self) -> None:
        self.sandbox.stop()
        self._say("  stopped the Market sandbox")

    # --- the worker -------------------------------------------------------------------------

    def worker_env(self) -> dict[str, str]:
        """This environment without any STOCKSYNC_* variable, plus the demo's settings."""
        (api_key,) = self.sandbox.config.api_keys
        env = clean_env(
            STOCKSYNC_DATA_DIR=str(self.data_dir),
            STOCKSYNC_DATABASE_URL=self.database_url,
            STOCKSYNC_MARKET_BASE_URL=self.sandbox.url,
            STOCKSYNC_MARKET_API_KEY=api_key,
            STOCKSYNC_WAREHOUSE_GROUPS=json.dumps(self._groups),
            STOCKSYNC_DRAIN_INTERVAL_SECONDS=str(DRAIN_INTERVAL_SECONDS),
        )
        # A proxy configured for the real world must not stand between the worker and the
        # sandbox on this machine.
        no_proxy = ",".join(filter(None, [env.get("NO_PROXY"), "127.0.0.1", "localhost"]))
        env["NO_PROXY"] = env["no_proxy"] = no_proxy
        # The worker runs in the data directory (no stray .env is read there): it must still
        # import this very project, installed or not.
        return with_project_on_path(env)

    def _start_worker(self) -> None:
        command = [
            sys.executable,
            "-m",
            "stocksync",
            "run",
            f"--concurrency={self._concurrency}",
            "--loglevel=INFO",
        ]
        with self.worker_log.open("ab") as log:
            # A kept --data-dir has the log of earlier runs: only what follows is this worker's.
            started_at = log.tell()
            # A session of its own: the terminal's Ctrl-C reaches the demo, which then stops
            # the worker in order (warm shutdown) instead of racing it.
            self.worker = subprocess.Popen(
                command,
                cwd=self.data_dir,
                env=self.worker_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._stack.callback(self._stop_worker)
        self._say(
            f"  worker      `stocksync run` (worker + beat, drain every "
            f"{DRAIN_INTERVAL_SECONDS:g}s, broker on the database), pid {self.worker.pid}"
        )
        self._wait_until_ready(started_at)

    def _wait_until_ready(self, log_offset: int) -> None:
        assert self.worker is not None
        timeout = WORKER_READY_TIMEOUT_SECONDS
        try:
            wait_for_log_line(self.worker, self.worker_log, log_offset, timeout)
        except ProcessExited:
            raise DemoError(f"the worker exited early:\n{self.worker_log_tail()}") from None
        except TimeoutError:
            raise DemoError(
                f"the worker was not ready after {WORKER_READY_TIMEOUT_SECONDS:g}s:\n"
                f"{self.worker_log_tail()}"
            ) from None

    def _stop_worker(self) -> None:
        worker = self.worker
        if worker is None:
            return
        # To the main process only: Celery's warm shutdown stops its pool and beat itself;
        # whatever of its process group is left (pool children, beat) is killed afterwards.
        if not stop_process_group(worker, STOP_TIMEOUT_SECONDS, whole_group=False):
            self._say("  the worker did not stop in time: killed it")
        self._say(f"  stopped the worker and beat (exit code {worker.returncode})")

    def worker_log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's output, for a failure report."""
        try:
            content = self.worker_log.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return "\n".join(content.splitlines()[-lines:])
