"""The chaos run's producer: it knows only the contract (CONTRACT.md §1, §2 and §4).

It sends `stocks.submit` messages by task name over the broker with publisher confirms, retries
a failed send with the same task id until the broker confirms it, and keeps a ledger of every
change it sent. From that ledger alone, and with the contract's formula written out here anew
(no project code is imported), it computes the value every key must end with.

The traffic: several campaigns, one of them in a warehouse group with another; changes with
out-of-order `occurred_at` within the last hour; duplicates of two kinds (a change resent with
its `event_id` inside a new message, and a whole message resent with the same task id); some
changes without `event_id` (keyed by task id and position) and some without `occurred_at`; SKUs
with surrounding whitespace; counts and deltas near the 2,000,000,000 bounds; and a few invalid
changes that the service must refuse.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from celery import Celery

COUNT_MAX = 2_000_000_000
QUEUE = "stocks.changes"
MOSCOW = timezone(timedelta(hours=3))
# Message sizes (changes per message) and how often each is drawn.
SIZES = (1, 3, 10, 40, 150, 400)
SIZE_WEIGHTS = (10, 10, 20, 30, 20, 10)


@dataclass(frozen=True, slots=True)
class Sent:
    """One valid change as the service must apply it: key, delta or count, instant (None: the
    moment the service received it, which is later than every count this producer sends)."""

    key: tuple[int, str]
    delta: int | None
    count: int | None
    at: datetime | None


@dataclass
class Ledger:
    """Everything sent, by identity: what the service must hold afterwards."""

    valid: dict[str, Sent] = field(default_factory=dict)
    invalid: set[tuple[str, int]] = field(default_factory=set)
    changes_sent: int = 0
    messages_sent: int = 0
    message_resends: int = 0
    event_resends: int = 0
    publish_retries: int = 0
    unconfirmed: int = 0

    def expected_values(self) -> dict[tuple[int, str], int]:
        """The contract's value of every key (CONTRACT.md §2), unclamped."""
        by_key: dict[tuple[int, str], list[Sent]] = defaultdict(list)
        for change in self.valid.values():
            by_key[change.key].append(change)
        return {key: contract_value(changes) for key, changes in by_key.items()}


def contract_value(changes: list[Sent]) -> int:
    """The latest absolute count plus the deltas strictly after it; else the sum of deltas."""
    counts = [c for c in changes if c.count is not None]
    deltas = [c for c in changes if c.delta is not None]
    if not counts:
        return sum(c.delta or 0 for c in deltas)
    base = max(counts, key=lambda c: c.at or datetime.max.replace(tzinfo=UTC))
    assert base.at is not None and base.count is not None
    return base.count + sum(c.delta or 0 for c in deltas if c.at is None or c.at > base.at)


def clamp(value: int) -> int:
    return max(0, min(COUNT_MAX, value))


def _iso(moment: datetime, rng: random.Random) -> str:
    """An instant written with `Z`, `+00:00` or `+03:00`: the same instant, compared as one."""
    form = rng.random()
    if form < 0.4:
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if form < 0.7:
        return moment.astimezone(UTC).isoformat()
    return moment.astimezone(MOSCOW).isoformat()


_INVALID: tuple[dict[str, Any], ...] = (
    {"campaign_id": 0, "sku": "BAD-1", "delta": 1},
    {"campaign_id": 2001, "sku": "BAD-2", "count": -1},
    {"campaign_id": 2001, "sku": "BAD-3", "delta": True},
    {"campaign_id": 2001, "sku": "BAD-4", "count": 1, "delta": 1},
    {"campaign_id": 2001, "sku": "BAD-5", "count": 1, "warehouseId": 7},
    {"campaign_id": 2001, "sku": "bad\x01sku", "count": 1},
    {"campaign_id": 2001, "sku": "BAD-7", "delta": "5"},
    {"campaign_id": 2001, "sku": "BAD-8", "count": COUNT_MAX + 1},
)


class Producer:
    """Builds and sends the run's messages; `ledger` says what the service must end with."""

    def __init__(
        self,
        broker_url: str,
        campaigns: list[int],
        groups: list[list[int]],
        skus_per_key_space: int,
        seed: int,
        started: datetime,
    ) -> None:
        self.app = Celery("chaos-producer", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_transport_options={"confirm_publish": True},
            broker_connection_retry=True,
            broker_connection_timeout=5,
        )
        self.campaigns = campaigns
        self.group_of = {c: g[0] for g in groups for c in g}
        self.skus = skus_per_key_space
        self.rng = random.Random(seed)
        self.started = started
        self.run_id = uuid.uuid4().hex[:8]
        self.ledger = Ledger()
        self._events = 0
        self._count_instants: dict[tuple[int, str], set[datetime]] = defaultdict(set)
        self._resendable: list[dict[str, Any]] = []  # changes with an event_id, sent before
        self._later: list[tuple[str, list[dict[str, Any]]]] = []  # messages to resend later
        self.stop = threading.Event()

    # --- building ---------------------------------------------------------------------------

    def _key(self, campaign: int, sku: str) -> tuple[int, str]:
        return (self.group_of.get(campaign, campaign), sku.strip())

    def _change(self) -> dict[str, Any]:
        rng = self.rng
        campaign = rng.choice(self.campaigns)
        space = self.group_of.get(campaign, campaign)
        # A few keys live near the top: counts close to 2e9 and large deltas push them over it.
        big = rng.random() < 0.03
        sku = (
            f"BIG{space}-{rng.randrange(5)}" if big else f"S{space}-{rng.randrange(self.skus):05d}"
        )
        if rng.random() < 0.03:
            sku = "  Ж-" + sku + " "  # the service trims it, the Market sees "Ж-S…"
        change: dict[str, Any] = {"campaign_id": campaign, "sku": sku}
        key = self._key(campaign, sku)
        if rng.random() < 0.2:
            # Counts lie before the run started: a delta without occurred_at is after all of them.
            while True:
                at = self.started - timedelta(seconds=rng.uniform(1, 3600))
                if at not in self._count_instants[key]:
                    break
            self._count_instants[key].add(at)
            low = COUNT_MAX - 1000 if big else 0
            change["count"] = rng.randrange(low, low + 500)
            change["occurred_at"] = _iso(at, rng)
        else:
            if big:
                change["delta"] = rng.randrange(1, 1_000_000_000)
            elif rng.random() < 0.01:
                change["delta"] = -1_500_000_000
            else:
                change["delta"] = rng.randint(-20, 30)
            if rng.random() < 0.9:
                at = datetime.now(UTC) - timedelta(seconds=rng.uniform(0, 3600))
                change["occurred_at"] = _iso(at, rng)
        if rng.random() < 0.85:
            self._events += 1
            change["event_id"] = f"chaos-{self.run_id}-{self._events}"
        return change

    def _record(self, task_id: str, changes: list[dict[str, Any]]) -> None:
        """Adds a message's changes to the ledger (idempotently: a resend records nothing new)."""
        for index, change in enumerate(changes):
            if change.get("_invalid"):
                self.ledger.invalid.add((task_id, index))
                continue
            identity = f"e:{change['event_id']}" if "event_id" in change else f"t:{task_id}:{index}"
            at = change.get("occurred_at")
            self.ledger.valid.setdefault(
                identity,
                Sent(
                    key=self._key(change["campaign_id"], change["sku"]),
                    delta=change.get("delta"),
                    count=change.get("count"),
                    at=datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None,
                ),
            )

    def next_message(self) -> tuple[str, list[dict[str, Any]]]:
        """A new message, or an earlier one again with its task id (a whole-message duplicate)."""
        rng = self.rng
        if self._later and rng.random() < 0.05:
            self.ledger.message_resends += 1
            return self._later.pop(rng.randrange(len(self._later)))
        size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
        changes: list[dict[str, Any]] = []
        for _ in range(size):
            roll = rng.random()
            if roll < 0.08 and self._resendable:
                changes.append(dict(rng.choice(self._resendable)))  # same event_id, same content
                self.ledger.event_resends += 1
            elif roll < 0.09:
                changes.append({**rng.choice(_INVALID), "_invalid": True})
            else:
                change = self._change()
                changes.append(change)
                if "event_id" in change and len(self._resendable) < 20_000:
                    self._resendable.append(change)
        message = (str(uuid.uuid4()), changes)
        if rng.random() < 0.05:
            self._later.append(message)
        return message

    # --- sending ----------------------------------------------------------------------------

    def send(self, task_id: str, changes: list[dict[str, Any]], deadline: float) -> bool:
        """Publishes until the broker confirms; a failed try is repeated with the same task id."""
        wire = [{k: v for k, v in c.items() if k != "_invalid"} for c in changes]
        # Recorded before the first try: once tried, the message may have reached the broker.
        self._record(task_id, changes)
        while True:
            try:
                self.app.send_task(
                    "stocks.submit",
                    kwargs={"changes": wire},
                    queue=QUEUE,
                    task_id=task_id,
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                )
            except Exception:
                if time.monotonic() > deadline:
                    self.ledger.unconfirmed += 1
                    return False
                self.ledger.publish_retries += 1
                time.sleep(0.5)
                continue
            self.ledger.messages_sent += 1
            self.ledger.changes_sent += len(changes)
            return True

    def run(self, target_changes: int, seconds: float, give_up_after: float) -> None:
        """Sends about `target_changes` changes spread over `seconds`, then the late resends."""
        begun = time.monotonic()
        while not self.stop.is_set() and self.ledger.changes_sent < target_changes:
            task_id, changes = self.next_message()
            self.send(task_id, changes, time.monotonic() + give_up_after)
            # Keep pace: the share of the target sent should follow the share of time elapsed.
            ahead = self.ledger.changes_sent / target_changes * seconds - (time.monotonic() - begun)
            if ahead > 0:
                self.stop.wait(ahead)
        for task_id, changes in self._later:
            self.ledger.message_resends += 1
            self.send(task_id, changes, time.monotonic() + give_up_after)
        self._later.clear()

    def close(self) -> None:
        self.app.close()
