"""`stocksync run`: migrations, then two Celery workers (ingest, push) and beat, as children."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from stocksync.migrations_runner import resolve_database_url, upgrade_to_head
from worker.settings import Settings, load_settings

HELP = "migrate, then the ingest and push workers and beat (embedded PostgreSQL if unconfigured)"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# How often the supervisor looks whether a child has exited.
POLL_SECONDS = 0.2


def configure(parser: argparse.ArgumentParser) -> None:
    """--concurrency and --loglevel, passed on to the Celery workers."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="processes of each pool (default: STOCKSYNC_INGEST_CONCURRENCY for the ingest pool, "
        "STOCKSYNC_PUSH_CONCURRENCY for the push pool)",
    )
    parser.add_argument(
        "--loglevel",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="log level of the workers and beat (default: INFO)",
    )


def children(
    settings: Settings, queues: list[str], concurrency: int | None, loglevel: str
) -> dict[str, list[str]]:
    """The command lines: the ingest worker on `stocks.changes` alone, so that a change is never
    queued behind pushes sleeping for the limiter; the push worker on every other queue (pushes,
    drains and the other beat tasks); one beat."""
    from worker.app import CHANGES_QUEUE

    celery = [sys.executable, "-m", "celery", "--app=worker"]
    others = [q for q in queues if q != CHANGES_QUEUE]

    def worker(name: str, on: list[str], processes: int) -> list[str]:
        return [
            *celery,
            "worker",
            f"--hostname={name}@%h",
            f"--queues={','.join(on)}",
            f"--concurrency={concurrency or processes}",
            f"--loglevel={loglevel}",
        ]

    return {
        "ingest": worker("ingest", [CHANGES_QUEUE], settings.ingest_concurrency),
        "push": worker("push", others, settings.push_concurrency),
        "beat": [
            *celery,
            "beat",
            f"--schedule={settings.data_dir / 'celerybeat-schedule'}",
            f"--loglevel={loglevel}",
        ],
    }


def _stop_before_workers_start(signum: int, frame: FrameType | None) -> None:
    # Until the children run, SIGTERM must still unwind through atexit so that an embedded
    # PostgreSQL started by this process is stopped.
    raise SystemExit(128 + signum)


class Supervisor:
    """The children, stopped together: SIGTERM or SIGINT is passed on once (Celery's warm
    shutdown), and a child that exits on its own stops the others."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.stopping = False
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for name, argv in commands.items():
            # Same process group and output: a terminal's Ctrl-C and a group kill reach them all.
            self.processes[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL)

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Warm shutdown of every child still running (once)."""
        if self.stopping:
            return
        self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    def wait(self) -> int:
        """Until every child has exited: 0 when all stopped cleanly on request, else the first
        non-zero code (1 for a child that ended by itself with 0)."""
        failed: int | None = None
        while any(p.poll() is None for p in self.processes.values()):
            for name, process in self.processes.items():
                code = process.returncode
                if code is None or (self.stopping and code == 0):
                    continue
                if failed is None:
                    failed = code or 1
                    print(f"stocksync run: the {name} process exited ({code})", file=sys.stderr)
                    self.stop()
            time.sleep(POLL_SECONDS)
        codes = [p.returncode for p in self.processes.values()]
        return failed if failed is not None else next((c for c in codes if c), 0)


def run(args: argparse.Namespace) -> int:
    """Runs until SIGTERM/SIGINT (Celery's warm shutdown); returns the children's exit code."""
    signal.signal(signal.SIGTERM, _stop_before_workers_start)
    # pgserver logs every pg_ctl call at INFO; the worker's INFO log is for the service.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    settings = load_settings()
    # The children (and their forked pools) read STOCKSYNC_DATABASE_URL from the environment,
    # where resolve_database_url puts the embedded server's: none of them starts a server.
    url = resolve_database_url(settings)
    upgrade_to_head(url)

    from worker.app import app

    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    queues = [queue.name for queue in app.conf.task_queues]
    supervisor = Supervisor(children(settings, queues, args.concurrency, args.loglevel))
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    return supervisor.wait()
