"""`--json` of the commands that report: one option, one way to print (an indented object)."""

from __future__ import annotations

import argparse
import json
from typing import Any

JSON_HELP = "print a JSON object instead"


def add_json_option(parser: argparse.ArgumentParser, shape: str | None = None) -> None:
    """`--json`; `shape` names the object's fields in the help."""
    parser.add_argument(
        "--json", action="store_true", help=f"print {shape} instead" if shape else JSON_HELP
    )


def print_json(data: Any) -> None:
    """The report as one JSON object on stdout (instants and paths as strings)."""
    print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
