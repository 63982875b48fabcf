"""`stocksync`: one sub-command per module of `stocksync.commands`; exit codes of
`stocksync.exit_codes` (64 on bad usage or settings, 3 when the database cannot be used)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

from sqlalchemy.exc import DBAPIError

from stocksync import exit_codes
from stocksync.commands import COMMANDS
from worker.settings import SettingsError

UNDEFINED_TABLE = "42P01"  # PostgreSQL's SQLSTATE for a missing relation


class Parser(argparse.ArgumentParser):
    """argparse, exiting 64 (usage) instead of its 2 on a bad option: 2 means "needs attention"."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message}\n")


def package_version() -> str:
    """The installed distribution's version (importlib.metadata), "unknown" when not installed."""
    try:
        return version("stocksync")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The parser with every registered command as a sub-command."""
    parser = Parser(
        prog="stocksync",
        description="Keeps Yandex Market stock levels equal to the warehouses' own.",
        epilog="Exit codes: 0 ok, 2 needs attention, 3 cannot check (database or Market "
        "unreachable), 64 bad usage or settings, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"stocksync {package_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command_parser = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            add_help=not command.passthrough,
        )
        command.configure(command_parser)
        command_parser.set_defaults(handler=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command, returns its exit code; bad settings print one line and return 64, a
    database that cannot be used one line and 3."""
    # platformdirs warns on every run as root without XDG_RUNTIME_DIR (CI, containers): noise.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = args.handler
    if extra and not command.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(command.run(args))
    except SettingsError as exc:
        print(f"stocksync: configuration error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except DBAPIError as exc:  # unreachable, or not migrated: say so in one line
        reason = str(exc.orig or exc).strip().splitlines()[0]
        if getattr(exc.orig, "sqlstate", None) == UNDEFINED_TABLE:
            reason += " (not migrated yet? run `stocksync migrate`)"
        print(f"stocksync: database error: {reason}", file=sys.stderr)
        return exit_codes.CANNOT_CHECK
