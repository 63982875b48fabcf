"""What the read methods remember beside the stock: the read ledger (the v3 stock is sandbox.v3)."""

from __future__ import annotations

import threading
from collections import defaultdict, deque
from typing import Any

from sandbox.ledger import plain, select


def _read_stats() -> dict[str, Any]:
    return {
        "requests": 0,
        "requests_by_status": defaultdict(int),
        "offers_asked": 0,
        "offers_returned": 0,
        "parallel_limited": 0,
        "rate_limited": 0,
        "max_in_window": 0,  # offers returned (v2) or requests (v3) in one window at most
    }


class ReadBook:
    """Counters and a bounded log of the read requests, per campaign (v2) and business (v3)."""

    def __init__(self, log_max: int) -> None:
        self._lock = threading.Lock()
        self._log: deque[dict[str, Any]] = deque(maxlen=log_max)
        self._totals = _read_stats()
        self._totals["injected"] = defaultdict(int)
        self._by: dict[str, dict[int, dict[str, Any]]] = {
            "v2": defaultdict(_read_stats),
            "v3": defaultdict(_read_stats),
        }

    def resize(self, log_max: int) -> None:
        """Keeps the newest `log_max` entries from now on."""
        with self._lock:
            self._log = deque(self._log, maxlen=log_max)

    def peak(self, method: str, key: int, in_window: int) -> None:
        """Notes how full a read window was after a request was counted in it."""
        with self._lock:
            stats = self._by[method][key]
            stats["max_in_window"] = max(stats["max_in_window"], in_window)

    def record(self, entry: dict[str, Any]) -> None:
        """Logs one read request and counts it."""
        status = "dropped" if entry["status"] is None else str(entry["status"])
        method, key = ("v3", entry["business"]) if entry["business"] else ("v2", entry["campaign"])
        with self._lock:
            self._log.append(entry)
            if entry["injected"]:
                self._totals["injected"][entry["injected"]] += 1
            targets = [self._totals] + ([self._by[method][key]] if key is not None else [])
            for stats in targets:
                stats["requests"] += 1
                stats["requests_by_status"][status] += 1
                for name in ("offers_asked", "offers_returned", "parallel_limited", "rate_limited"):
                    stats[name] += entry[name]

    def requests(
        self, campaign: int | None, business: int | None, since: int, limit: int | None
    ) -> list[dict[str, Any]]:
        """Logged reads (oldest first) with seq > since, of one campaign or business if given."""
        with self._lock:
            return select(self._log, since, limit, campaign=campaign, business=business)

    def stats(self) -> dict[str, Any]:
        """The counters as JSON: totals, `campaigns` (v2 reads) and `businesses` (v3 reads)."""
        with self._lock:
            totals = plain(self._totals)
            del totals["max_in_window"]  # a window is per campaign or business, not overall
            per = {
                name: {str(k): plain(v) for k, v in sorted(self._by[method].items())}
                for name, method in (("campaigns", "v2"), ("businesses", "v3"))
            }
        return {**totals, **per}
