"""`stocksync discover [--json]`: the warehouse groups and v3 campaigns the Market says, as .env
lines, then where today's settings differ; exit 0 when they match, 2 when not, 3 when the Market
cannot be read."""

from __future__ import annotations

import argparse
import json
import sys

from domain.discovery import Discovery, v3_json
from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from worker.market_client import MarketReadError
from worker.routing_check import read_discovery, reader_for
from worker.settings import load_settings

HELP = (
    "reads the key's campaigns and warehouses from the Market and prints "
    "STOCKSYNC_WAREHOUSE_GROUPS and STOCKSYNC_V3_CAMPAIGNS for a .env file, then the differences"
)
MATCH_EXIT_CODE = exit_codes.OK
DIFFERENT_EXIT_CODE = exit_codes.ATTENTION
UNREADABLE_EXIT_CODE = exit_codes.CANNOT_CHECK


def configure(parser: argparse.ArgumentParser) -> None:
    """--json."""
    add_json_option(parser, '{"warehouse_groups": […], "v3_campaigns": {…}, "differences": […]}')


def render(found: Discovery) -> str:
    """The two .env lines, then notes and differences as `#` comments (the output can be pasted
    into a .env file as it is)."""
    lines = [
        "STOCKSYNC_WAREHOUSE_GROUPS=" + json.dumps(found.warehouse_groups, separators=(",", ":")),
        "STOCKSYNC_V3_CAMPAIGNS=" + json.dumps(v3_json(found.v3_campaigns), separators=(",", ":")),
    ]
    lines += [f"# note: {note}" for note in found.notes]
    if found.differences:
        lines.append(f"# {len(found.differences)} difference(s) from the settings in force:")
        lines += [f"# - {difference}" for difference in found.differences]
    else:
        lines.append("# the settings in force match the Market")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Prints what the Market says; 0 when the settings match, 2 when not, 3 when unreadable."""
    settings = load_settings()
    try:
        found = read_discovery(settings, reader_for(settings))
    except MarketReadError as exc:
        print(f"stocksync: cannot read the Market: {exc}", file=sys.stderr)
        return UNREADABLE_EXIT_CODE
    if args.json:
        print_json(found.as_json())
    else:
        print(render(found))
    return DIFFERENT_EXIT_CODE if found.differences else MATCH_EXIT_CODE
