"""The registry of sub-commands: a new command is one module with a `COMMAND` and one line here."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from stocksync.commands import (
    demo,
    discover,
    import_snapshot,
    metrics,
    migrate,
    prune,
    rejected,
    resync,
    run,
    sandbox,
    status,
    verify,
)


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without options of its own."""


@dataclass(frozen=True, slots=True)
class Command:
    """A sub-command: its name, one-line help, its options, and the function that runs it."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    configure: Callable[[argparse.ArgumentParser], None] = field(default=_no_arguments)
    # Passes unknown arguments (and --help) through to the command instead of refusing them.
    passthrough: bool = False


COMMANDS: list[Command] = [
    Command("migrate", migrate.HELP, migrate.run, migrate.configure),
    Command("run", run.HELP, run.run, run.configure),
    Command("status", status.HELP, status.run, status.configure),
    Command("metrics", metrics.HELP, metrics.run, metrics.configure),
    Command("prune", prune.HELP, prune.run, prune.configure),
    Command("sandbox", sandbox.HELP, sandbox.run, passthrough=True),
    Command("rejected", rejected.HELP, rejected.run, rejected.configure),
    Command("resync", resync.HELP, resync.run, resync.configure),
    Command("verify", verify.HELP, verify.run, verify.configure),
    Command("import", import_snapshot.HELP, import_snapshot.run, import_snapshot.configure),
    Command("demo", demo.HELP, demo.run, demo.configure),
    Command("discover", discover.HELP, discover.run, discover.configure),
]
