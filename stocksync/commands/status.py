"""`stocksync status [--json] [--max-age S]`: the backlog per campaign; 2 when it is too old."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC

from stocksync.migrations_runner import resolve_database_url
from stocksync.status_report import StatusReport, read_status
from worker.database import make_engine
from worker.monitoring import CampaignFigures
from worker.settings import load_settings

HELP = "per campaign: pending SKUs, oldest pending age, last push, parked reason, rejected count"
DEFAULT_MAX_AGE_SECONDS = 300.0
TOO_OLD_EXIT_CODE = 2
COLUMNS = (
    "campaign",
    "pending",
    "oldest pending",
    "last push (UTC)",
    "SKUs 1m/1h",
    "requests 1m/1h",
    "420/5xx 1h",
    "parked SKUs",
    "rejected",
    "sent by",
    "state",
)


def configure(parser: argparse.ArgumentParser) -> None:
    """--json and --max-age."""
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
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
    print(json.dumps(report.as_json(), indent=2) if args.json else render_table(report))
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


def _row(c: CampaignFigures) -> tuple[str, ...]:
    last_push = c.last_push_at
    return (
        str(c.campaign_id),
        str(c.pending_keys),
        _age(c.oldest_pending_age_seconds),
        last_push.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if last_push else "never",
        f"{c.skus_pushed_last_minute}/{c.skus_pushed_last_hour}",
        f"{c.requests_last_minute}/{c.requests_last_hour}",
        f"{c.rate_limited_last_hour}/{c.failed_last_hour}",
        str(c.parked_skus),
        str(c.rejected),
        "v2" if c.business_id is None else f"v3 business {c.business_id}",
        _state(c),
    )


def _verify_line(c: CampaignFigures) -> str:
    sweep = c.last_full_sweep_at
    when = sweep.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if sweep else "never"
    return (
        f"verify {c.campaign_id}: last full sweep {when}, keys checked 24h "
        f"{c.keys_checked_last_day}, drift found {c.drift_found_total}, repaired "
        f"{c.drift_repaired_total}, keep drifting {c.keeps_drifting}"
    )


def render_table(report: StatusReport) -> str:
    """The report as an aligned text table with the message-level counts below it."""
    lines: list[str] = []
    if report.campaigns:
        rows = [COLUMNS, *(_row(c) for c in report.campaigns)]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
        for row in rows:
            lines.append(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
        for c in report.campaigns:
            if c.last_full_sweep_at or c.keys_checked_last_day or c.drift_found_total:
                lines.append(_verify_line(c))
    else:
        lines.append("no campaigns yet: nothing received")
    for b in report.v3_businesses:
        campaigns = ", ".join(map(str, b.campaigns)) or "none configured"
        state = f"parked: {b.parked_reason}" if b.parked_reason else "ok"
        lines.append(
            f"v3 business {b.business_id} (campaigns {campaigns}): "
            f"{b.requests_in_rate_window}/{b.requests_per_minute_limit} requests in the minute, "
            f"{b.items_pushed_last_minute} items, {b.rate_limited_last_hour} 420s in the last "
            f"hour, {state}"
        )
    lines.append(f"unreadable messages: {report.unreadable_messages}")
    if report.rejected_without_campaign:
        lines.append(
            f"rejected changes without a valid campaign: {report.rejected_without_campaign}"
        )
    lines.append(_routing_line(report))
    return "\n".join(lines)


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
