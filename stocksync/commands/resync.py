"""`stocksync resync --campaign N [--sku …] [--drifting] [--json]`: send current values again."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from domain.market_rules import normalize_sku
from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from worker.database import make_engine
from worker.operations import drifting_skus, resync_group, resync_skus
from worker.settings import load_settings

HELP = "send a campaign's current stock values (all, or the listed SKUs) to the Market again"
EPILOG = """\
Each key's version grows by one (its value stays): the drain sends it again, and a SKU parked
after a 400 becomes eligible again. N may be any campaign of a warehouse group: the group's keys
are resynced. Exit 2 when the campaign has no keys or a listed SKU is unknown (the known ones
are still resynced). --drifting resyncs the keys that keep drifting (the verify sweep left them
alone); every resynced key is sent with updatedAt = now when it had drifted.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """--campaign (required) and --sku, repeatable or with several values."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--campaign", type=int, required=True, metavar="N", help="the campaign")
    parser.add_argument(
        "--sku",
        dest="skus",
        action="extend",
        nargs="+",
        metavar="SKU",
        help="only these SKUs (default: every key of the campaign)",
    )
    parser.add_argument(
        "--drifting",
        action="store_true",
        help="only the keys that keep drifting (see `stocksync verify`)",
    )
    add_json_option(parser, '{"campaign": N, "group_id": N, "resynced": N, "unknown_skus": […]}')


def _scope(campaign_id: int, group_id: int) -> str:
    if group_id == campaign_id:
        return f"campaign {campaign_id}"
    return f"campaign {campaign_id} (warehouse group sent to {group_id})"


def _json(campaign_id: int, group_id: int, count: int, unknown: list[str]) -> dict[str, Any]:
    return {
        "campaign": campaign_id,
        "group_id": group_id,
        "resynced": count,
        "unknown_skus": unknown,
    }


def run(args: argparse.Namespace) -> int:
    """Bumps the keys and prints how many will be sent again; 2 when none or some unknown."""
    settings = load_settings()
    group_id = settings.group_of(args.campaign)
    scope = _scope(args.campaign, group_id)
    engine = make_engine(resolve_database_url(settings))
    try:
        if args.drifting:
            args.skus = drifting_skus(engine, group_id) + list(args.skus or [])
            if not args.skus:
                if args.json:
                    print_json(_json(args.campaign, group_id, 0, []))
                else:
                    print(f"{scope}: no key keeps drifting: nothing to send")
                return exit_codes.OK
        if args.skus is None:
            count = resync_group(engine, group_id)
            unknown: list[str] = []
        else:
            wanted = list(dict.fromkeys(normalize_sku(sku) for sku in args.skus))
            bumped = set(resync_skus(engine, group_id, wanted))
            count = len(bumped)
            unknown = [sku for sku in wanted if sku not in bumped]
    finally:
        engine.dispose()
    if args.json:
        print_json(_json(args.campaign, group_id, count, unknown))
    if args.skus is None and count == 0:
        print(f"stocksync resync: {scope} has no keys: nothing to send", file=sys.stderr)
        return exit_codes.ATTENTION
    if not args.json:
        print(f"{scope}: {count:,} key{'s' if count != 1 else ''} will be sent again")
    if unknown:
        listed = ", ".join(repr(sku) for sku in unknown)
        print(f"stocksync resync: {scope} has no key for SKU {listed}", file=sys.stderr)
        return exit_codes.ATTENTION
    return exit_codes.OK
