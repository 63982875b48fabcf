"""`stocksync sandbox [args…]`: the local Market sandbox, `sandbox.server.main(argv)`."""

from __future__ import annotations

import argparse
import sys

HELP = "run a local Market sandbox server (its options: stocksync sandbox --help)"


def run(args: argparse.Namespace) -> int:
    """Hands every argument after `sandbox` to the sandbox server and returns its exit code."""
    try:
        from sandbox.server import main  # only this command needs it
    except ModuleNotFoundError as exc:
        if exc.name not in {"sandbox", "sandbox.server"}:
            raise
        print("stocksync: the sandbox is not installed (no sandbox.server)", file=sys.stderr)
        return 1
    return int(main(list(args.extra)))
