"""`stocksync replay [TASK_ID …|--all] [--json]`: put unreadable messages back on the broker."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import Engine, text

from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from worker.app import CHANGES_QUEUE, app
from worker.database import make_engine
from worker.settings import load_settings

HELP = "send stocks.submit messages stored as unreadable (e.g. set aside) back to the broker"
EPILOG = """\
Each message goes back under its own task id, so changes without an event_id keep their
identity and a change applied before is not applied twice, and changes without occurred_at keep
the time the service first received them. Its unreadable row goes and its delivery count starts
again; if it fails again it is stored again with the new reason. Unreadable messages
that are no stocks.submit call (a pickle, another content type) are skipped. Exit 2 when
nothing was replayed or an id was not found, 64 without task ids or --all.
"""

_UNREADABLE = text("""
    SELECT id, task_id, raw FROM rejected
    WHERE position = -1 AND (CAST(:all AS boolean) OR task_id = ANY(CAST(:ids AS text[])))
    ORDER BY id
""")
_FORGET = text("""
    DELETE FROM rejected WHERE id = :id
""")
# The delivery count starts again; the first-seen time stays, so changes without occurred_at
# keep the time the service first received them (a replay days later must not make an old
# count newer than the deltas that followed it).
_RESET_COUNT = text(
    "UPDATE redelivery SET deliveries = 1, last_at = now() WHERE task_id = :task_id"
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Task ids (as `stocksync rejected` lists them), or --all."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="messages to replay")
    parser.add_argument("--all", action="store_true", help="every unreadable message")
    add_json_option(parser, '{"replayed": [TASK_ID, …], "skipped": [{"task_id", "reason"}, …]}')


def task_call(raw: str | None) -> tuple[list[Any], dict[str, Any]] | None:
    """The args and kwargs of a stored `stocks.submit` call, or None for anything else."""
    try:
        parsed = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    if not isinstance(parsed, dict) or set(parsed) - {"args", "kwargs", "task_id"}:
        return None
    args, kwargs = parsed.get("args"), parsed.get("kwargs")
    if "task_id" in parsed or not isinstance(args, list) or not isinstance(kwargs, dict):
        return None  # a task id the database cannot hold would be refused again
    return args, kwargs


NOT_FOUND = "no unreadable message with this id"


def replay(
    engine: Engine, task_ids: list[str], everything: bool
) -> tuple[list[str], list[tuple[str, str]]]:
    """Publishes each replayable message, then removes its row; (replayed, skipped and why)."""
    replayed: list[str] = []
    skipped: list[tuple[str, str]] = []
    with engine.connect() as conn:
        rows = conn.execute(_UNREADABLE, {"all": everything, "ids": task_ids}).all()
    for row_id, task_id, raw in rows:
        call = task_call(raw)
        if call is None:
            skipped.append((task_id, "not replayable (not a stocks.submit call)"))
            continue
        # Published before the row goes: a crash in between replays it twice, which the
        # idempotency keys absorb.
        app.send_task(
            "stocks.submit", args=call[0], kwargs=call[1], task_id=task_id, queue=CHANGES_QUEUE
        )
        with engine.begin() as conn:
            conn.execute(_FORGET, {"id": row_id})
            conn.execute(_RESET_COUNT, {"task_id": task_id})
        replayed.append(task_id)
    found = {task_id for _, task_id, _ in rows}
    skipped.extend((t, NOT_FOUND) for t in task_ids if t not in found)
    return replayed, skipped


def run(args: argparse.Namespace) -> int:
    """Replays and prints one line per message; 2 when nothing was replayed or an id is unknown."""
    if not args.all and not args.task_ids:
        print("replay: give task ids or --all", file=sys.stderr)
        return exit_codes.USAGE
    settings = load_settings()
    engine = make_engine(resolve_database_url(settings))
    try:
        replayed, skipped = replay(engine, list(args.task_ids), args.all)
    finally:
        engine.dispose()
    if args.json:
        print_json(
            {
                "replayed": replayed,
                "skipped": [{"task_id": t, "reason": reason} for t, reason in skipped],
            }
        )
    else:
        for task_id in replayed:
            print(f"replayed {task_id}")
        for task_id, reason in skipped:
            print(f"{task_id}: {reason}")
    complete = replayed and not any(reason == NOT_FOUND for _, reason in skipped)
    return exit_codes.OK if complete else exit_codes.ATTENTION
