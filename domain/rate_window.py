"""The rolling-window rule: SKUs sent in any 60 seconds stay within the campaign's limit."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def seconds_until_room(
    window: Iterable[tuple[int, datetime]], limit: int, needed: int, now: datetime
) -> float:
    """How long until `needed` more SKUs fit: 0.0 when they fit now.

    `window` holds (skus, leaves_at) for every request still counted, `leaves_at` being the moment
    it stops counting. A request larger than the whole limit waits for an empty window.
    """
    entries = sorted(window, key=lambda e: e[1])
    used = sum(skus for skus, _ in entries)
    excess = used + min(needed, limit) - limit
    if excess <= 0:
        return 0.0
    freed = 0
    for skus, leaves_at in entries:
        freed += skus
        if freed >= excess:
            return max(0.0, (leaves_at - now).total_seconds())
    return 0.0  # unreachable: the whole window leaving always frees enough
