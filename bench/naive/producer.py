"""Naive A: the producer calls the Market itself, one `PUT` of one SKU per change.

What such a script does: it keeps the values it believes right in a dict (so a delta can become
the count the Market wants), sends `updatedAt` = now, retries 5xx and broken connections a few
times with a short sleep, has no rate limiting and ignores `event_id` and `occurred_at`. Several
services produce at once: `threads` threads share the stream round-robin and the dict (under a
lock, the kindest version of it). What it cannot send after its retries, it logs and drops.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from bench.naive.workload import Change, paced

TRIES = 3


@dataclass
class NaiveProducer:
    """The naive producer; `run` sends the stream and returns when every thread is done."""

    market: str
    threads: int = 4
    values: dict[tuple[int, str], int] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    handled: int = 0
    last_done: float = 0.0  # monotonic time the last change was handled
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _value_after(self, change: Change) -> int:
        with self._lock:
            key = (change.campaign_id, change.sku)
            if change.count is not None:
                self.values[key] = change.count
            else:
                self.values[key] = self.values.get(key, 0) + (change.delta or 0)
            return max(0, self.values[key])

    def _put(self, change: Change, count: int) -> str:
        url = f"{self.market}/v2/campaigns/{change.campaign_id}/offers/stocks"
        for attempt in range(TRIES):
            body = {
                "skus": [
                    {
                        "sku": change.sku,
                        "items": [{"count": count, "updatedAt": datetime.now(UTC).isoformat()}],
                    }
                ]
            }
            try:
                response = requests.put(url, json=body, headers={"Api-Key": "bench"}, timeout=10)
            except requests.RequestException:
                outcome = "connection_error"
            else:
                if response.status_code < 500:
                    return str(response.status_code)  # 200, or a 4xx (420 included): given up
                outcome = str(response.status_code)
            self._count(f"retry_after_{outcome}")
            if attempt < TRIES - 1:
                time.sleep(0.5 * (attempt + 1))
        return f"gave_up_{outcome}"

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _thread(self, changes: Sequence[Change], start: float, stop: threading.Event) -> None:
        for change in paced(changes, start, stop):
            outcome = self._put(change, self._value_after(change))
            with self._lock:
                self.outcomes[outcome] += 1
                self.handled += 1
                self.last_done = time.monotonic()

    def run(self, changes: Sequence[Change], start: float, stop: threading.Event) -> None:
        """Sends `changes` on schedule from `start` (monotonic) until done or `stop` is set."""
        workers = [
            threading.Thread(
                target=self._thread,
                args=(changes[number :: self.threads], start, stop),
                name=f"naive-a-{number}",
                daemon=True,
            )
            for number in range(self.threads)
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()

    def report(self) -> dict[str, Any]:
        """What the producer saw: answers by status, retries, changes given up."""
        with self._lock:
            return dict(sorted(self.outcomes.items()))
