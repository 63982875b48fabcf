"""The workload of `python -m bench.naive`: one seeded stream of stock changes, and what the
Market must hold.

The same stream feeds stocksync and the two naive ways. A change is due `at` seconds after the
stream starts; its `occurred_at` is an offset from that start, materialized when it is sent, so
the expected state (CONTRACT.md section 2, computed with `domain.stock_value.value_of`) does not
depend on when a run starts. The stream has what real producers send:

- every key starts with an inventory count; then mostly deltas (orders, returns, restocks) and
  some further counts (stocktakes);
- duplicates: a change sent again with the same `event_id` (a producer's retry);
- out-of-order changes: `occurred_at` up to a minute earlier than changes sent before it (a late
  event), so an old delta may fall before a newer count and must then change nothing.

Every instant is distinct (microseconds), so no two counts of a key tie.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from threading import Event
from typing import Any

from domain.stock_value import LoggedChange, value_of

COUNT_MAX = 2_000_000_000
MSK = timezone(timedelta(hours=3))
Key = tuple[int, str]


@dataclass(frozen=True, slots=True)
class Change:
    """One change as a producer sends it; a duplicate repeats its original's event and instant."""

    at: float  # seconds after the stream's start when it is due
    campaign_id: int
    sku: str
    delta: int | None
    count: int | None
    event_id: str
    occurred_us: int  # occurred_at, in microseconds after the stream's start (may be negative)
    duplicate: bool = False

    def occurred_at(self, start: datetime) -> datetime:
        """The change's instant for a stream that starts at `start` (an aware datetime)."""
        return start + timedelta(microseconds=self.occurred_us)

    def contract(self, start: datetime) -> dict[str, Any]:
        """The change object of CONTRACT.md section 1 (offsets alternate between UTC and MSK)."""
        at = self.occurred_at(start)
        if self.occurred_us % 2:
            at = at.astimezone(MSK)
        body: dict[str, Any] = {"campaign_id": self.campaign_id, "sku": self.sku}
        if self.count is not None:
            body["count"] = self.count
        else:
            body["delta"] = self.delta
        body["event_id"] = self.event_id
        body["occurred_at"] = at.isoformat()
        return body


@dataclass(frozen=True, slots=True)
class Workload:
    """The stream, in sending order."""

    changes: tuple[Change, ...]
    keys: int
    campaigns: tuple[int, ...]
    rate: float  # changes per second

    @property
    def seconds(self) -> float:
        """When the last change is due."""
        return self.changes[-1].at if self.changes else 0.0

    def expected(self) -> dict[int, dict[str, int]]:
        """{campaign: {sku: count}}: value_of over the de-duplicated changes, clamped."""
        seen: set[str] = set()
        by_key: dict[Key, list[LoggedChange]] = defaultdict(list)
        epoch = datetime(2000, 1, 1, tzinfo=MSK)
        for seq, change in enumerate(self.changes):
            if change.event_id in seen:
                continue
            seen.add(change.event_id)
            by_key[(change.campaign_id, change.sku)].append(
                LoggedChange(seq, change.occurred_at(epoch), change.delta, change.count)
            )
        expected: dict[int, dict[str, int]] = {c: {} for c in self.campaigns}
        for (campaign, sku), logged in by_key.items():
            expected[campaign][sku] = max(0, min(COUNT_MAX, value_of(logged)))
        return expected

    def naive_intent(self) -> dict[int, dict[str, int]]:
        """What a naive system would leave if every send arrived once, in sending order.

        The naive ways apply each change as it comes (value + delta, or = count), duplicates
        included, `occurred_at` ignored. The gap between this and `expected` is what their
        semantics lose even without a fault; the gap between this and the sandbox is what their
        delivery loses.
        """
        values: dict[Key, int] = {}
        for change in self.changes:
            key = (change.campaign_id, change.sku)
            if change.count is not None:
                values[key] = change.count
            else:
                values[key] = values.get(key, 0) + (change.delta or 0)
        intent: dict[int, dict[str, int]] = {c: {} for c in self.campaigns}
        for (campaign, sku), value in values.items():
            intent[campaign][sku] = max(0, min(COUNT_MAX, value))
        return intent

    def describe(self) -> dict[str, Any]:
        """Counts of what the stream holds, for the report."""
        expected, intent = self.expected(), self.naive_intent()
        return {
            "changes": len(self.changes),
            "keys": len({(c.campaign_id, c.sku) for c in self.changes}),
            "campaigns": list(self.campaigns),
            "rate_per_second": self.rate,
            "seconds": round(self.seconds, 1),
            "counts": sum(1 for c in self.changes if c.count is not None),
            "deltas": sum(1 for c in self.changes if c.delta is not None),
            "duplicates": sum(1 for c in self.changes if c.duplicate),
            "late": sum(
                1
                for previous, c in _pairs_by_key(self.changes)
                if c.occurred_us < previous.occurred_us
            ),
            "keys_wrong_by_naive_semantics": sum(
                1 for c, skus in expected.items() for s, v in skus.items() if intent[c][s] != v
            ),
        }


def _pairs_by_key(changes: Sequence[Change]) -> Iterator[tuple[Change, Change]]:
    last: dict[Key, Change] = {}
    for change in changes:
        key = (change.campaign_id, change.sku)
        if key in last and not change.duplicate:
            yield last[key], change
        last[key] = change


def generate(
    *,
    changes: int,
    keys: int,
    rate: float,
    campaigns: tuple[int, ...] = (1001, 1002),
    weights: tuple[float, ...] = (0.75, 0.25),
    duplicate_share: float = 0.05,
    late_share: float = 0.10,
    count_share: float = 0.10,
    seed: int = 1,
) -> Workload:
    """A seeded stream of `changes` changes over `keys` keys, due at `rate` changes per second."""
    rng = random.Random(seed)
    key_list: list[Key] = []
    for number in range(keys):
        campaign = rng.choices(campaigns, weights)[0]
        key_list.append((campaign, f"SKU-{number:05d}"))
    started: set[Key] = set()
    stream: list[Change] = []
    used: set[int] = set()
    for position in range(changes):
        at = position / rate
        if stream and rng.random() < duplicate_share:
            original = rng.choice(stream[-200:])
            stream.append(
                Change(
                    at,
                    original.campaign_id,
                    original.sku,
                    original.delta,
                    original.count,
                    original.event_id,
                    original.occurred_us,
                    duplicate=True,
                )
            )
            continue
        key = rng.choice(key_list)
        # It happened a little before it is sent; a late one up to a minute before.
        occurred = int(at * 1e6) - rng.randrange(1_000, 500_000)
        if key in started and rng.random() < late_share:
            occurred -= rng.randrange(1_000_000, 60_000_000)
        while occurred in used:
            occurred += 1
        used.add(occurred)
        delta: int | None = None
        count: int | None = None
        if key not in started or rng.random() < count_share:
            count = rng.randrange(20, 200)
        elif rng.random() < 0.8:
            delta = -rng.randrange(1, 4)  # an order line
        else:
            delta = rng.randrange(1, 12)  # a return or a restock
        started.add(key)
        event_id = f"bench-{seed}-{position}"
        stream.append(Change(at, key[0], key[1], delta, count, event_id, occurred))
    return Workload(tuple(stream), keys, campaigns, rate)


def paced(changes: Sequence[Change], start: float, stop: Event) -> Iterator[Change]:
    """The changes, each yielded no earlier than its due time (`start` on the monotonic clock).

    A consumer that falls behind gets the overdue ones at once: the stream does not wait for it.
    """
    for change in changes:
        delay = start + change.at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        if stop.is_set():
            return
        yield change


def ticks(
    changes: Sequence[Change], start: float, stop: Event, tick: float = 0.1
) -> Iterator[list[Change]]:
    """The changes grouped by `tick` seconds of due time, as a producer that flushes every tick."""
    position = 0
    number = 0
    while position < len(changes) and not stop.is_set():
        now = time.monotonic() - start
        batch = []
        while position < len(changes) and changes[position].at <= now:
            batch.append(changes[position])
            position += 1
        if batch:
            yield batch
        number += 1
        if position < len(changes):
            # The next tick boundary, but not before the next change is due.
            due = max(number * tick, changes[position].at)
            stop.wait(max(0.0, start + due - time.monotonic()))
