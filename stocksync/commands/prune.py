"""`stocksync prune [--days N] [--json]`: delete the history the retention no longer keeps, now."""

from __future__ import annotations

import argparse

from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from worker.database import make_engine
from worker.housekeeping import prune
from worker.settings import load_settings

HELP = "prune the change log and rejected changes past STOCKSYNC_RETENTION_DAYS (beat: every 5 min)"


def configure(parser: argparse.ArgumentParser) -> None:
    """--days overrides STOCKSYNC_RETENTION_DAYS for this run; --json."""
    parser.add_argument("--days", type=float, help="retention in days (default: the setting)")
    add_json_option(parser, '{"days": D, "changes": N, "rejected": N}')


def run(args: argparse.Namespace) -> int:
    """Prunes and prints how many rows went."""
    settings = load_settings()
    engine = make_engine(resolve_database_url(settings), settings, long_statements=True)
    try:
        days = settings.retention_days if args.days is None else args.days
        pruned = prune(engine, days, max_batches=1_000_000)
    finally:
        engine.dispose()
    if args.json:
        print_json({"days": days, "changes": pruned.changes, "rejected": pruned.rejected})
        return 0
    print(
        f"pruned {pruned.changes} change-log rows and {pruned.rejected} refusals "
        f"older than {days:g} days"
    )
    return 0
