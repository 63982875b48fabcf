"""Sends the changes of a JSON file (or stdin) to stocksync without Celery; prints the task id.

    python send_changes.py --broker amqp://guest:guest@localhost:5672// changes.json
    echo '[{"campaign_id": 1001, "sku": "A-100", "delta": -2}]' | python send_changes.py -

The file holds a list of change objects, or `{"changes": [...]}`. Exit code 0: RabbitMQ confirmed
the message; 1: it did not (the error is printed); 2: the changes break the schema (`--validate`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from stocksync_producer import InvalidChanges, submit_changes


def main(argv: list[str] | None = None) -> int:
    """Reads the changes, sends them with publisher confirms and prints the task id."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a JSON file of changes, or - for stdin")
    parser.add_argument(
        "--broker",
        default=os.environ.get("STOCKSYNC_BROKER_URL", "amqp://guest:guest@localhost:5672//"),
        help="the AMQP URL (default: $STOCKSYNC_BROKER_URL)",
    )
    parser.add_argument("--task-id", help="reuse a task id to send the same message again")
    parser.add_argument("--validate", action="store_true", help="check the JSON Schema first")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    loaded = json.loads(text)
    changes = loaded["changes"] if isinstance(loaded, dict) else loaded
    try:
        task_id = submit_changes(changes, args.broker, task_id=args.task_id, validate=args.validate)
    except InvalidChanges as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except Exception as exc:  # any failure to publish is reported, not hidden
        print(f"not sent: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(task_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
