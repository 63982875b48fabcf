"""`stocksync run` with nothing configured: embedded PostgreSQL, the database as broker, clean stop.

HOME points at a fresh directory, so the per-user data directory (and the embedded server's data)
is new. The only variable set is the Market's base URL, aimed at a closed local port: a test never
sends traffic off this machine, whatever the drain does with a pending key.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from tests.acceptance.conftest import STOCKSYNC, clean_env
from tests.services import kill_process_group, wait_for

CLOSED_LOCAL_PORT = "http://127.0.0.1:9"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0

_PRODUCER = """
import sys
from celery import Celery

producer = Celery(broker=sys.argv[1])
producer.send_task(
    "stocks.submit",
    kwargs={"changes": [{"campaign_id": 1001, "sku": "SMOKE-1", "count": 7,
                         "event_id": "smoke:1"}]},
    queue="stocks.changes",
)
producer.close()
"""


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh, short HOME (the server's socket path must stay under the OS limit)."""
    path = Path(tempfile.mkdtemp(prefix="ss-home-", dir="/tmp"))
    yield path
    _stop_postgres_of(path)
    shutil.rmtree(path, ignore_errors=True)


def _postgres_processes(under: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(under) in part for part in cmdline) and "postgres" in " ".join(cmdline):
            found.append(process)
    return found


def _live_processes_in_group(pgid: int) -> list[psutil.Process]:
    """Processes of the group that still run (an exited child may linger as a zombie of init)."""
    found = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
        except ProcessLookupError:
            continue
    return found


def _stop_postgres_of(home: Path) -> None:
    for process in _postgres_processes(home):
        process.kill()


def _pgdata(home: Path) -> Path:
    return home / ".local" / "share" / "stocksync" / "pgdata"


def _embedded_url(home: Path) -> str:
    """The running embedded server's URL, read from its postmaster.pid (socket directory)."""
    lines = (_pgdata(home) / "postmaster.pid").read_text().splitlines()
    return f"postgresql+psycopg://postgres@/postgres?host={lines[4].strip()}"


def _wait_for(
    predicate: Callable[[], bool],
    what: str,
    timeout: float,
    run: subprocess.Popen[bytes],
    log: Path,
) -> None:
    """Polls `predicate` until true; fails at once if `run` exits, else after `timeout`."""

    def ready() -> bool:
        if run.poll() is not None:
            raise AssertionError(
                f"`stocksync run` exited ({run.returncode}) before {what}:\n"
                + log.read_text(errors="replace")[-4000:]
            )
        return predicate()

    try:
        wait_for(what, ready, timeout, interval=0.2)
    except TimeoutError as timed_out:
        raise AssertionError(f"{timed_out}:\n{log.read_text(errors='replace')[-4000:]}") from None


def _stock_value(url: str) -> int | None:
    libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq) as conn:
        row = conn.execute(
            "SELECT value FROM stock WHERE group_id = 1001 AND sku = 'SMOKE-1'"
        ).fetchone()
    return None if row is None else int(row[0])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_on_embedded_defaults_stores_a_change_and_stops_cleanly(home: Path) -> None:
    env = clean_env(HOME=str(home), STOCKSYNC_MARKET_BASE_URL=CLOSED_LOCAL_PORT)
    env.pop("XDG_DATA_HOME", None)

    # Given a migrated embedded database, which `migrate` leaves stopped
    migrate = subprocess.run(
        [str(STOCKSYNC), "migrate"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert _postgres_processes(home) == []

    # When `stocksync run` is up and a producer sends one change through the default broker
    log = home / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [str(STOCKSYNC), "run", "--concurrency", "1"],
            cwd=home,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: b" ready." in log.read_bytes(), "the worker", READY_TIMEOUT, run, log)
        url = _embedded_url(home)
        subprocess.run(
            [sys.executable, "-c", _PRODUCER, "sqla+" + url],
            env=env,
            check=True,
            timeout=60,
        )

        # Then the change reaches the outbox, and status reads it from the same server
        _wait_for(lambda: _stock_value(url) == 7, "the change in `stock`", 60, run, log)
        status = subprocess.run(
            [str(STOCKSYNC), "status", "--json"],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert [c["campaign_id"] for c in json.loads(status.stdout)["campaigns"]] == [1001]
        assert run.poll() is None, "status must not stop the server `run` holds"

        # And SIGTERM is a warm shutdown that leaves nothing running
        run.send_signal(signal.SIGTERM)
        exit_code = run.wait(timeout=STOP_TIMEOUT)
    finally:
        if run.poll() is None:
            kill_process_group(run)

    assert exit_code == 0, log.read_text(errors="replace")[-4000:]
    assert "Warm shutdown" in log.read_text(errors="replace")
    assert _live_processes_in_group(run.pid) == []  # no pool child nor beat outlived the worker
    assert _postgres_processes(home) == []
    assert not (_pgdata(home) / "postmaster.pid").exists()
