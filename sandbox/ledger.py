"""Bookkeeping all sandbox methods share: picking from a bounded request log, counters as JSON."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def select(
    log: Iterable[dict[str, Any]], since: int, limit: int | None, **keys: int | None
) -> list[dict[str, Any]]:
    """Copies of the entries (oldest first) with seq > since whose `keys` match (None: any)."""
    entries = [
        dict(e)
        for e in log
        if e["seq"] > since and all(v is None or e[k] == v for k, v in keys.items())
    ]
    return entries if limit is None else entries[-limit:]


def plain(counters: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with defaultdicts turned into plain dicts, safe to serialize outside the lock."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in counters.items()}
