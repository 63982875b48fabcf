"""`stocksync status [--json] [--max-age S]`: the backlog per campaign; 2 when it is too old."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC

from rich.console import Console
from rich.table import Table
from rich.text import Text

from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from stocksync.status_report import StatusReport, read_status
from worker.database import make_engine
from worker.monitoring import CampaignFigures
from worker.settings import load_settings

HELP = "per campaign: pending SKUs, oldest pending age, last push, parked reason, rejected count"
DEFAULT_MAX_AGE_SECONDS = 300.0
TOO_OLD_EXIT_CODE = exit_codes.ATTENTION
# The width used when stdout is no terminal and COLUMNS is unset (a pipe, a file): no column is
# dropped, nothing wrapped, as before.
UNLIMITED_WIDTH = 10_000
COLUMN_GAP = 2
# A wrapping column (the state) counts this wide at most when columns are fitted: a long parked
# reason wraps rather than push every other column out.
WRAPPED_WIDTH = 24


def configure(parser: argparse.ArgumentParser) -> None:
    """--json and --max-age."""
    add_json_option(parser)
    parser.add_argument(
        "--max-age",
        type=float,
        default=DEFAULT_MAX_AGE_SECONDS,
        metavar="SECONDS",
        help="exit 2 when a campaign's oldest pending change is older (default: 300)",
    )


def run(args: argparse.Namespace) -> int:
    """Prints the report; 2 when a campaign is parked or its oldest pending change is too old."""
    settings = load_settings()
    engine = make_engine(resolve_database_url(settings))
    try:
        report = read_status(engine, settings)
    finally:
        engine.dispose()
    if args.json:
        print_json(report.as_json())
    else:
        print(render_table(report, args.max_age, *terminal()))
    too_old = report.too_old(args.max_age)
    for campaign in too_old:
        print(
            f"stocksync: campaign {campaign.campaign_id}: oldest pending change is "
            f"{_age(campaign.oldest_pending_age_seconds)} old (more than {args.max_age:g}s)",
            file=sys.stderr,
        )
    routing = report.routing
    if routing is not None and routing.matches is False:
        print(
            f"stocksync: the routing settings differ from the Market "
            f"({len(routing.differences)}): run `stocksync discover`",
            file=sys.stderr,
        )
    for campaign in report.parked():
        print(
            f"stocksync: campaign {campaign.campaign_id} is parked: {campaign.parked_reason}",
            file=sys.stderr,
        )
    return TOO_OLD_EXIT_CODE if too_old or report.parked() else 0


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _state(c: CampaignFigures) -> str:
    if c.parked_reason:
        return f"parked: {c.parked_reason}"
    if c.degraded_reason:
        return f"degraded: {c.degraded_reason}"
    if c.blocked_until:
        return f"420 until {c.blocked_until.astimezone(UTC):%H:%M:%S}"
    return "ok"


def _last_push(c: CampaignFigures) -> str:
    last_push = c.last_push_at
    return last_push.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if last_push else "never"


def _state_style(c: CampaignFigures, max_age: float | None) -> str | None:
    if c.parked_reason:
        return "bold red"
    if c.degraded_reason or c.blocked_until:
        return "yellow"
    return None


def _age_style(c: CampaignFigures, max_age: float | None) -> str | None:
    age = c.oldest_pending_age_seconds
    return "bold red" if max_age is not None and age is not None and age > max_age else None


@dataclass(frozen=True, slots=True)
class Column:
    """One column of the table: its header, its cell, and how much it matters when the terminal
    is narrow (columns of the highest `drop_order` go first; 0 never goes)."""

    header: str
    cell: Callable[[CampaignFigures], str]
    drop_order: int = 0
    # The cell's colour on a terminal (parked, degraded, stale), or None.
    style: Callable[[CampaignFigures, float | None], str | None] | None = None
    wraps: bool = False  # a long text that may wrap when even the kept columns are too wide


# The table, in order; a new figure is one line here.
COLUMNS: tuple[Column, ...] = (
    Column("campaign", lambda c: str(c.campaign_id)),
    Column("pending", lambda c: str(c.pending_keys)),
    Column("oldest pending", lambda c: _age(c.oldest_pending_age_seconds), style=_age_style),
    Column("last push (UTC)", _last_push, drop_order=3),
    Column("SKUs 1m/1h", lambda c: f"{c.skus_pushed_last_minute}/{c.skus_pushed_last_hour}", 5),
    Column("requests 1m/1h", lambda c: f"{c.requests_last_minute}/{c.requests_last_hour}", 6),
    Column("420/5xx 1h", lambda c: f"{c.rate_limited_last_hour}/{c.failed_last_hour}", 4),
    Column("parked SKUs", lambda c: str(c.parked_skus), drop_order=2),
    Column("rejected", lambda c: str(c.rejected), drop_order=1),
    Column(
        "sent by", lambda c: "v2" if c.business_id is None else f"v3 business {c.business_id}", 7
    ),
    Column("state", _state, style=_state_style, wraps=True),
)


def terminal() -> tuple[int, bool]:
    """How stdout takes the table: its width (the terminal's, COLUMNS, else unlimited) and
    whether it gets colour (a terminal, and NO_COLOR unset)."""
    width = shutil.get_terminal_size(fallback=(UNLIMITED_WIDTH, 24)).columns
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    return (width if width > 0 else UNLIMITED_WIDTH), color


def _fitting(columns: tuple[Column, ...], rows: list[list[str]], width: int) -> list[int]:
    """The indexes of the columns kept: the least important dropped until the rest fit."""
    natural = [
        max(len(column.header), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)
    ]
    natural = [
        min(n, max(WRAPPED_WIDTH, len(c.header))) if c.wraps else n
        for n, c in zip(natural, columns, strict=True)
    ]
    kept = list(range(len(columns)))
    for drop in sorted(
        (i for i, c in enumerate(columns) if c.drop_order), key=lambda i: -columns[i].drop_order
    ):
        if sum(natural[i] for i in kept) + COLUMN_GAP * (len(kept) - 1) <= width:
            break
        kept.remove(drop)
    return kept


def _campaign_table(campaigns: list[CampaignFigures], max_age: float | None, width: int) -> Table:
    rows = [[column.cell(c) for column in COLUMNS] for c in campaigns]
    kept = _fitting(COLUMNS, rows, width)
    table = Table(box=None, pad_edge=False, padding=(0, COLUMN_GAP, 0, 0), show_edge=False)
    for i in kept:
        column = COLUMNS[i]
        table.add_column(
            column.header,
            overflow="fold" if column.wraps else "ellipsis",
            no_wrap=not column.wraps,
            header_style="bold",
        )
    for campaign, row in zip(campaigns, rows, strict=True):
        cells = []
        for i in kept:
            style = COLUMNS[i].style
            cells.append(Text(row[i], style=(style(campaign, max_age) if style else None) or ""))
        table.add_row(*cells)
    return table


def _verify_line(c: CampaignFigures) -> str:
    sweep = c.last_full_sweep_at
    when = sweep.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if sweep else "never"
    return (
        f"verify {c.campaign_id}: last full sweep {when}, keys checked 24h "
        f"{c.keys_checked_last_day}, drift found {c.drift_found_total}, repaired "
        f"{c.drift_repaired_total}, keep drifting {c.keeps_drifting}"
    )


def render_table(
    report: StatusReport,
    max_age: float | None = None,
    width: int = UNLIMITED_WIDTH,
    color: bool = False,
) -> str:
    """The report as a table no wider than `width` (less important columns dropped, the state
    wrapped), with the message-level counts below it; colour (parked, degraded, older than
    `max_age`) only when `color`."""
    out = io.StringIO()
    console = Console(
        file=out,
        width=width,
        force_terminal=color,
        no_color=not color,
        color_system="auto" if color else None,
        highlight=False,
        emoji=False,
        markup=False,
    )
    if report.campaigns:
        console.print(_campaign_table(report.campaigns, max_age, width))
        for c in report.campaigns:
            if c.last_full_sweep_at or c.keys_checked_last_day or c.drift_found_total:
                console.print(_verify_line(c))
    else:
        console.print("no campaigns yet: nothing received")
    for b in report.v3_businesses:
        campaigns = ", ".join(map(str, b.campaigns)) or "none configured"
        state = f"parked: {b.parked_reason}" if b.parked_reason else "ok"
        console.print(
            f"v3 business {b.business_id} (campaigns {campaigns}): "
            f"{b.requests_last_minute}/{b.requests_per_minute_limit} requests in the last minute, "
            f"{b.items_pushed_last_minute} items, {b.rate_limited_last_hour} 420s in the last "
            f"hour, {state}"
        )
    console.print(f"unreadable messages: {report.unreadable_messages}")
    if report.rejected_without_campaign:
        console.print(
            f"rejected changes without a valid campaign: {report.rejected_without_campaign}"
        )
    console.print(_routing_line(report))
    return "\n".join(line.rstrip() for line in out.getvalue().rstrip("\n").split("\n"))


def _routing_line(report: StatusReport) -> str:
    routing = report.routing
    if routing is None:
        return "routing: not checked against the Market yet"
    when = f"checked {routing.checked_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    if routing.error is not None:
        return f"routing: cannot read the Market ({when}): {routing.error}"
    if not routing.differences:
        return f"routing: the settings match the Market ({when})"
    listed = "".join(f"\n  - {d}" for d in routing.differences)
    return f"routing: {len(routing.differences)} difference(s) from the Market ({when}):{listed}"
