"""`stocksync migrate [--json]`: Alembic's `upgrade head` on the configured database."""

from __future__ import annotations

import argparse

from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url, upgrade_to_head
from worker.settings import load_settings

HELP = "apply the database migrations (alembic upgrade head)"


def configure(parser: argparse.ArgumentParser) -> None:
    """--json; the database comes from STOCKSYNC_DATABASE_URL or the embedded server."""
    add_json_option(parser, '{"revision": "…", "head": true}')


def run(args: argparse.Namespace) -> int:
    """Brings the database to the head revision; 0 when it is there."""
    url = resolve_database_url(load_settings())
    head = upgrade_to_head(url)
    if args.json:
        print_json({"revision": head, "head": True})
    else:
        print(f"database is at revision {head} (head)")
    return 0
