"""`stocksync verify [--campaign N] [--json]`: read every acknowledged key back now and repair."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tqdm import tqdm

from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from worker import runtime
from worker.settings import get_settings
from worker.verify import SweepResult, campaigns_to_sweep, keeps_drifting

HELP = "read every acknowledged key back from the Market now, repair what drifted, report it"
EPILOG = """\
A sweep now, beside the worker's own paced one: every key acknowledged and not pending is read
back (in batches of 500, within the sweep's share of the read limit, after sending). A key the
Market does not hold, or holds with another count, has drifted: it is made pending again and goes
with the next drain, unless it keeps drifting (more than 3 times in 24 hours): then it is left
alone and listed; `stocksync resync --campaign N --drifting` sends those. A progress bar is drawn
on stderr when it is a terminal. Exit 2 when something drifted, 1 when a campaign could not be
read through (3, the reason is printed), else 0; 64 on bad usage.
"""
DRIFT_EXIT_CODE = exit_codes.ATTENTION  # CONTRACT.md 5
SKUS_SHOWN = 20


def configure(parser: argparse.ArgumentParser) -> None:
    """--campaign and --json."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--campaign", type=int, metavar="N", help="only this campaign")
    add_json_option(parser)


def _campaign_json(campaign: int, result: SweepResult, drifting: list[str]) -> dict[str, Any]:
    return {
        "campaign": campaign,
        "checked": result.checked,
        "drifted": dict(result.drifted),
        "repaired": result.repaired,
        "still_drifting": drifting,
        "drifted_skus": sorted(result.drifted_skus),
        "complete": result.complete,
        "stopped": None if result.complete else result.stopped,
    }


def _shown(skus: list[str]) -> str:
    more = f" … and {len(skus) - SKUS_SHOWN} more" if len(skus) > SKUS_SHOWN else ""
    return ", ".join(skus[:SKUS_SHOWN]) + more


def run(args: argparse.Namespace) -> int:
    """Sweeps, prints the report; 2 when something drifted, 3 when a campaign was not read
    through."""
    settings = get_settings()
    resolve_database_url(settings)  # the embedded server, if any, stops when the command ends
    engine = runtime.engine()
    verifier = runtime.verifier()
    try:
        if args.campaign is not None:
            campaigns = [settings.group_of(args.campaign)]
        else:
            with engine.connect() as conn:
                campaigns = campaigns_to_sweep(conn, runtime.routing())
        before = verifier.now()
        total = sum(verifier.due(c, before) for c in campaigns)
        reports = []
        with tqdm(
            total=total, unit="keys", file=sys.stderr, disable=not sys.stderr.isatty()
        ) as bar:
            for campaign in campaigns:
                result = verifier.sweep_now(campaign, before, on_batch=bar.update)
                with engine.connect() as conn:
                    drifting = keeps_drifting(conn, campaign)
                reports.append(_campaign_json(campaign, result, drifting))
    finally:
        engine.dispose()
    drifted = {kind: sum(r["drifted"][kind] for r in reports) for kind in ("missing", "count")}
    summary = {
        "checked": sum(r["checked"] for r in reports),
        "drifted": drifted,
        "repaired": sum(r["repaired"] for r in reports),
        "still_drifting": sum(len(r["still_drifting"]) for r in reports),
        "campaigns": reports,
    }
    if args.json:
        print_json(summary)
    else:
        for r in reports:
            found = r["drifted"]["missing"] + r["drifted"]["count"]
            print(
                f"campaign {r['campaign']}: {r['checked']:,} keys checked, {found:,} drifted "
                f"({r['drifted']['missing']:,} missing, {r['drifted']['count']:,} another count), "
                f"{r['repaired']:,} repaired, {len(r['still_drifting']):,} still drifting"
            )
            if r["drifted_skus"]:
                print(f"  drifted: {_shown(r['drifted_skus'])}")
            if r["still_drifting"]:
                print(f"  keep drifting (left alone): {_shown(r['still_drifting'])}")
    failed = [r for r in reports if not r["complete"]]
    for r in failed:
        print(
            f"stocksync verify: campaign {r['campaign']} not read through: {r['stopped']}",
            file=sys.stderr,
        )
    if drifted["missing"] + drifted["count"] > 0:
        return DRIFT_EXIT_CODE
    return exit_codes.CANNOT_CHECK if failed else exit_codes.OK
