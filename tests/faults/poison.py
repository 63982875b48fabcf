"""Fault injector loaded into a test worker (`celery worker -I tests.faults.poison`).

A poison message cannot be made from valid code: this makes one. Any `stocks.submit` message
holding a change with sku "POISON" kills its pool process with SIGKILL while it is being handled,
after the task has started, every time it is delivered.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from typing import Any

import tasks.submit
from domain.changes import ParsedMessage

_real_parse = tasks.submit.parse_message


def _parse_or_die(args: tuple[Any, ...], kwargs: dict[str, Any], now: datetime) -> ParsedMessage:
    changes = kwargs.get("changes")
    if isinstance(changes, list) and any(
        isinstance(c, dict) and c.get("sku") == "POISON" for c in changes
    ):
        os.kill(os.getpid(), signal.SIGKILL)
    return _real_parse(args, kwargs, now)


tasks.submit.parse_message = _parse_or_die
