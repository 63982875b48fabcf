"""`stocksync run`: migrations, then one Celery worker with embedded beat on every queue."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from types import FrameType

from stocksync.migrations_runner import resolve_database_url, upgrade_to_head
from worker.settings import get_settings, load_settings

HELP = "migrate, then run a worker with embedded beat (embedded PostgreSQL when unconfigured)"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure(parser: argparse.ArgumentParser) -> None:
    """--concurrency and --loglevel, passed on to the Celery worker."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="worker processes (default: Celery's, the number of CPUs)",
    )
    parser.add_argument(
        "--loglevel",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="log level of the worker and beat (default: INFO)",
    )


def _stop_before_worker_starts(signum: int, frame: FrameType | None) -> None:
    # Until Celery installs its own handler, SIGTERM must still unwind through atexit so that
    # an embedded PostgreSQL started by this process is stopped.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Runs until SIGTERM/SIGINT (Celery's warm shutdown); returns the worker's exit code."""
    signal.signal(signal.SIGTERM, _stop_before_worker_starts)
    # pgserver logs every pg_ctl call at INFO; the worker's INFO log is for the service.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    settings = load_settings()
    url = resolve_database_url(settings)
    # The worker, its forked pool and beat read settings from the environment: they all get the
    # URL resolved here, so none of them starts or looks for an embedded server of its own.
    os.environ["STOCKSYNC_DATABASE_URL"] = url
    get_settings.cache_clear()
    upgrade_to_head(url)

    from celery.bin.celery import celery
    from click.exceptions import Exit

    from worker.app import app  # configured from the environment set above

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    queues = ",".join(queue.name for queue in app.conf.task_queues)
    argv = [
        "--app=worker",
        "worker",
        "--beat",
        f"--schedule={settings.data_dir / 'celerybeat-schedule'}",
        f"--loglevel={args.loglevel}",
        f"--queues={queues}",
    ]
    if args.concurrency is not None:
        argv.append(f"--concurrency={args.concurrency}")
    # Celery's own command line, in this process; unlike `app.start`, it returns the exit code.
    try:
        code = celery.main(args=argv, prog_name="stocksync run", standalone_mode=False)
    except Exit as exc:
        code = exc.exit_code
    return code if isinstance(code, int) else 0
