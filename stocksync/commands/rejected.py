"""`stocksync rejected [--campaign N] [--since T] [--limit N] [--json]`: newest first."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from domain.since import SINCE_HELP, parse_since
from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from worker.database import make_engine
from worker.operations import RejectedEntry, list_rejected
from worker.settings import Settings, load_settings

HELP = "list rejected changes, unreadable messages and held SKUs with their reasons"
DEFAULT_LIMIT = 50
RAW_CHARS = 80
COLUMNS = ("at (UTC)", "kind", "campaign", "where", "reason", "raw")
EPILOG = """\
kinds: "rejected" a change that breaks a rule (where = task id #position in its message; for
`stocksync import`, the import id and the file's line), "unreadable" a whole message that could
not be read (where = task id), "parked" a SKU the Market rejected with a 400, held until its
value changes or `stocksync resync` (where = its SKU; its time is when its value was set: the
moment it was held is not recorded).
--campaign N covers N's whole warehouse group: rejected changes naming any campaign of the
group and the group's held SKUs; unreadable messages and changes without a valid campaign are
then left out.
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """--campaign, --since, --limit and --json."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--campaign", type=int, metavar="N", help="only this campaign's group")
    parser.add_argument("--since", metavar="WHEN", help=f"only newer ones: {SINCE_HELP}")
    parser.add_argument(
        "--limit",
        type=_positive,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N lines, the newest (default: {DEFAULT_LIMIT})",
    )
    add_json_option(parser)


def _group_members(settings: Settings, campaign_id: int) -> tuple[int, list[int]]:
    """The campaign's group key and every campaign of that group (itself alone if ungrouped)."""
    members = next((g for g in settings.warehouse_groups if campaign_id in g), [campaign_id])
    return settings.group_of(campaign_id), list(members)


def run(args: argparse.Namespace) -> int:
    """Prints the newest entries; 0, or 64 when --since cannot be read."""
    settings = load_settings()
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, datetime.now(UTC))
        except ValueError as exc:
            print(f"stocksync rejected: --since: {exc}; use {SINCE_HELP}", file=sys.stderr)
            return exit_codes.USAGE
    group_id, campaigns = (None, None)
    if args.campaign is not None:
        group_id, campaigns = _group_members(settings, args.campaign)
    engine = make_engine(resolve_database_url(settings))
    try:
        rows = list_rejected(
            engine, campaigns=campaigns, group_id=group_id, since=since, limit=args.limit + 1
        )
    finally:
        engine.dispose()
    more = len(rows) > args.limit
    rows = rows[: args.limit]
    if args.json:
        print_json({"items": [as_json(r) for r in rows], "more": more})
    else:
        print(render_table(rows, more, args.limit))
    return 0


def as_json(entry: RejectedEntry) -> dict[str, Any]:
    """One line as JSON-ready data; `at` in ISO 8601, `raw` the stored JSON text."""
    return {
        "kind": entry.kind,
        "at": entry.at.isoformat(),
        "campaign_id": entry.campaign_id,
        "task_id": entry.task_id,
        "position": entry.position,
        "sku": entry.sku,
        "reason": entry.reason,
        "raw": entry.raw,
    }


def _cell(text: str, limit: int | None = None) -> str:
    """One line of printable text, shortened to `limit` characters."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    if limit is not None and len(flat) > limit:
        return flat[: limit - 1] + "…"
    return flat


def _where(entry: RejectedEntry) -> str:
    if entry.kind == "parked":
        return f"sku {entry.sku}"
    if entry.kind == "unreadable":
        return str(entry.task_id)
    if str(entry.task_id).startswith("import:"):
        return f"{entry.task_id} line {entry.position}"
    return f"{entry.task_id} #{entry.position}"


def _row(entry: RejectedEntry) -> tuple[str, ...]:
    return (
        entry.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        entry.kind,
        "-" if entry.campaign_id is None else str(entry.campaign_id),
        _cell(_where(entry)),
        _cell(entry.reason),
        "-" if entry.raw is None else _cell(entry.raw, RAW_CHARS),
    )


def render_table(rows: list[RejectedEntry], more: bool, limit: int) -> str:
    """The lines as an aligned text table, with a note when older ones were left out."""
    if not rows:
        return "nothing rejected, unreadable or parked"
    table = [COLUMNS, *(_row(r) for r in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    if more:
        lines.append(f"(the newest {limit} shown; older ones with a larger --limit or --since)")
    return "\n".join(lines)
