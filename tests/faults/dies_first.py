"""Fault injector loaded into a test worker (`celery worker -I tests.faults.dies_first`).

The first delivery of a `stocks.submit` message with a count for sku "DIES-FIRST" kills its pool
process with SIGKILL after the task started (and after anything it commits before validating);
later deliveries wait until the file `$STOCKSYNC_TEST_RELEASE` exists, so a test can commit other
changes in between. `$STOCKSYNC_TEST_MARKER` records that the first delivery happened.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import tasks.submit
from domain.changes import ParsedMessage

_real_parse = tasks.submit.parse_message


def _parse_or_die_once(
    args: tuple[Any, ...], kwargs: dict[str, Any], now: datetime
) -> ParsedMessage:
    changes = kwargs.get("changes")
    if isinstance(changes, list) and any(
        isinstance(c, dict) and c.get("sku") == "DIES-FIRST" and "count" in c for c in changes
    ):
        marker = Path(os.environ["STOCKSYNC_TEST_MARKER"])
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        release = Path(os.environ["STOCKSYNC_TEST_RELEASE"])
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return _real_parse(args, kwargs, now)


tasks.submit.parse_message = _parse_or_die_once
