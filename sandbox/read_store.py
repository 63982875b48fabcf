"""What the read methods remember beside the v2 stock: the v3 stock and the read ledger."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sandbox.read_rules import Offer


class V3Stock:
    """v3 stock: (business, partnerWarehouseId) -> SKU -> (count, updatedAt); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.data: dict[tuple[int, int], dict[str, tuple[int, datetime]]] = defaultdict(dict)
        self._sorted: dict[tuple[int, int], list[str]] = {}

    def write(self, business: int, warehouse: int, entries: Iterable[Offer]) -> int:
        """Stores (sku, count, updatedAt) entries, last write wins; returns how many."""
        key, written = (business, warehouse), 0
        with self._lock:
            stock = self.data[key]
            for sku, count, updated_at in entries:
                if sku not in stock:
                    self._sorted.pop(key, None)
                stock[sku] = (count, updated_at)
                written += 1
        return written

    def drop(self, business: int, warehouse: int, skus: Iterable[str]) -> int:
        """Forgets SKUs of a warehouse; returns how many it held."""
        key = (business, warehouse)
        with self._lock:
            stock = self.data.get(key, {})
            dropped = sum(stock.pop(sku, None) is not None for sku in skus)
            if dropped:
                self._sorted.pop(key, None)
        return dropped

    def get(self, business: int, warehouse: int, skus: Iterable[str]) -> list[Offer]:
        """The held SKUs among `skus`, in the order asked."""
        with self._lock:
            stock = self.data.get((business, warehouse), {})
            found = ((sku, stock.get(sku)) for sku in skus)
            return [(sku, v[0], v[1]) for sku, v in found if v is not None]

    def page(
        self, business: int, warehouse: int, after: str | None, limit: int
    ) -> tuple[list[Offer], bool]:
        """Up to `limit` SKUs in order after `after`, and whether more follow."""
        key = (business, warehouse)
        with self._lock:
            stock = self.data.get(key, {})
            keys = self._sorted.get(key)
            if keys is None:
                keys = self._sorted[key] = sorted(stock)
            start = 0 if after is None else bisect.bisect_right(keys, after)
            page = keys[start : start + limit]
            return [(s, stock[s][0], stock[s][1]) for s in page], start + limit < len(keys)

    def snapshot(self, business: int | None = None) -> dict[str, Any]:
        """{business: {warehouse: {sku: {count, updatedAt}}}} (of one business if given)."""
        with self._lock:
            result: dict[str, Any] = {}
            for (b, w), skus in sorted(self.data.items()):
                if business is None or b == business:
                    result.setdefault(str(b), {})[str(w)] = {
                        sku: {"count": c, "updatedAt": at.isoformat()}
                        for sku, (c, at) in skus.items()
                    }
            return result


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
            entries = [
                dict(e)
                for e in self._log
                if e["seq"] > since
                and (campaign is None or e["campaign"] == campaign)
                and (business is None or e["business"] == business)
            ]
        return entries if limit is None else entries[-limit:]

    def stats(self) -> dict[str, Any]:
        """The counters as JSON: totals, `campaigns` (v2 reads) and `businesses` (v3 reads)."""
        with self._lock:
            totals = {k: dict(v) if isinstance(v, dict) else v for k, v in self._totals.items()}
            del totals["max_in_window"]  # a window is per campaign or business, not overall
            per = {
                name: {
                    str(k): {n: dict(x) if isinstance(x, dict) else x for n, x in v.items()}
                    for k, v in sorted(self._by[method].items())
                }
                for name, method in (("campaigns", "v2"), ("businesses", "v3"))
            }
        return {**totals, **per}
