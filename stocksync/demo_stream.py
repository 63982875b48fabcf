"""The demo's sample stream and what it must leave at the Market, computed from the contract alone.

Pure logic: no Celery, no database, no HTTP. `generate_stream` plans a realistic, seeded stream of
`stocks.submit` messages; `expected_outcome` applies CONTRACT.md section 2 to what it sends
(valid changes only, duplicates once) without using the service's own code, so that the demo
proves the service rather than agreeing with itself.
"""

from __future__ import annotations

import math
import random
import string
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

# Campaigns 1001, 1002 and 3001 stand alone; 2001 and 2002 are one warehouse group, stocked (and
# sent to the Market) under 2001 only.
STANDALONE_CAMPAIGNS = (1001, 1002, 3001)
WAREHOUSE_GROUPS: tuple[tuple[int, ...], ...] = ((2001, 2002),)
MESSAGE_INTERVAL_SECONDS = 0.5
CHANGES_PER_MESSAGE_MAX = 10_000
COUNT_MAX = 2_000_000_000
MIN_CHANGES = 50
MSK = timezone(timedelta(hours=3))
CYRILLIC_GOODS = "\u0422\u041e\u0412\u0410\u0420"  # "TOVAR" (goods): SKUs need not be ASCII

# Each invalid change breaks one rule; the service's reason must start with this field's name.
INVALID_KINDS = ("sku", "delta", "campaign_id", "count", "warehouse_id")

Key = tuple[int, str]  # (campaign the Market holds the stock under, sku after trimming)


@dataclass(frozen=True, slots=True)
class DemoMessage:
    """One `stocks.submit` message: its changes, when to send it, which changes are invalid."""

    at: float  # seconds after the stream's start
    changes: tuple[dict[str, Any], ...]
    invalid: Mapping[int, str]  # position in `changes` -> the field its rejection must name


@dataclass(frozen=True, slots=True)
class DemoStream:
    """The planned messages, in sending order, and the warehouse groups the worker must know."""

    start: datetime
    messages: tuple[DemoMessage, ...]
    groups: tuple[tuple[int, ...], ...] = WAREHOUSE_GROUPS
    duplicates: int = 0

    @property
    def total_changes(self) -> int:
        """Every change object sent, duplicates and invalid ones included."""
        return sum(len(m.changes) for m in self.messages)

    @property
    def invalid_changes(self) -> int:
        """The changes the service must reject."""
        return sum(len(m.invalid) for m in self.messages)

    def planned_send(self, index: int) -> datetime:
        """When message `index` is due (the instant a change without `occurred_at` is given)."""
        return self.start + timedelta(seconds=self.messages[index].at)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the Market must hold: {campaign: {sku: count}}, and per key the settling message."""

    expected: dict[int, dict[str, int]]
    # The first message after which the key's sent count never changes again (for freshness).
    settled_by: dict[Key, int] = field(default_factory=dict)

    @property
    def keys(self) -> int:
        """The number of stock keys the Market must hold."""
        return sum(len(skus) for skus in self.expected.values())


# --- the expected state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    at: datetime
    order: int  # arrival order in the stream: of two counts at one instant, the later wins
    message: int
    delta: int | None
    count: int | None


def group_targets(groups: Sequence[Sequence[int]]) -> dict[int, int]:
    """Campaign -> the campaign its stock is kept and sent under (a group's first campaign)."""
    return {campaign: group[0] for group in groups for campaign in group}


def formula_value(entries: Sequence[_Entry]) -> int:
    """The latest count (by instant, then arrival) plus the deltas strictly after it; else Σδ."""
    counts = [e for e in entries if e.count is not None]
    if not counts:
        return sum(e.delta for e in entries if e.delta is not None)
    latest = max(counts, key=lambda e: (e.at, e.order))
    after = (e.delta for e in entries if e.delta is not None and e.at > latest.at)
    return (latest.count or 0) + sum(after)


def clamp(value: int) -> int:
    """The count the Market is sent: the value within 0 … 2,000,000,000."""
    return max(0, min(COUNT_MAX, value))


def _entries_by_key(stream: DemoStream) -> dict[Key, list[_Entry]]:
    targets = group_targets(stream.groups)
    seen_events: set[str] = set()
    by_key: dict[Key, list[_Entry]] = defaultdict(list)
    order = 0
    for index, message in enumerate(stream.messages):
        for position, change in enumerate(message.changes):
            if position in message.invalid:
                continue
            event_id = change.get("event_id")
            if event_id is not None:
                if event_id in seen_events:
                    continue  # a duplicate: no effect
                seen_events.add(event_id)
            raw_at = change.get("occurred_at")
            at = (
                datetime.fromisoformat(raw_at) if raw_at is not None else stream.planned_send(index)
            )
            campaign = int(change["campaign_id"])
            key = (targets.get(campaign, campaign), str(change["sku"]).strip())
            by_key[key].append(_Entry(at, order, index, change.get("delta"), change.get("count")))
            order += 1
    return by_key


def _settled_by(entries: Sequence[_Entry], final: int) -> int:
    """The first message after which every prefix of the stream gives the key its final count."""
    messages = sorted({e.message for e in entries})
    settled = messages[-1]
    for index in reversed(messages):
        if clamp(formula_value([e for e in entries if e.message <= index])) != final:
            break
        settled = index
    return settled


def expected_outcome(stream: DemoStream) -> Outcome:
    """The contract's formula over the valid, de-duplicated changes; counts clamped at 0."""
    expected: dict[int, dict[str, int]] = defaultdict(dict)
    settled: dict[Key, int] = {}
    for key, entries in _entries_by_key(stream).items():
        final = clamp(formula_value(entries))
        expected[key[0]][key[1]] = final
        settled[key] = _settled_by(entries, final)
    return Outcome(dict(sorted(expected.items())), settled)


# --- the sample stream -------------------------------------------------------------------------


@dataclass(slots=True)
class _KeyPlan:
    target: int
    sku: str
    senders: tuple[int, ...]  # the campaigns whose changes land on this key
    deltas_only: bool
    instants: set[int] = field(default_factory=set)  # milliseconds used: no two changes tie
    planned: int = 0  # changes planned so far; the first one sets up the stock


def _sku_names(rng: random.Random, count: int) -> list[str]:
    """Realistic SKUs, including pairs the contract says are distinct (leading zeros, case)."""
    names = dict.fromkeys(["0557722", "557722", "sku-abc", "SKU-ABC", f"{CYRILLIC_GOODS}-12"])
    while len(names) < count:
        style = rng.randrange(4)
        if style == 0:
            name = f"A-{rng.randrange(100, 100_000)}"
        elif style == 1:
            name = f"{rng.randrange(0, 10_000_000):07d}"
        elif style == 2:
            letters = "".join(rng.choices(string.ascii_uppercase, k=3))
            name = f"{letters}-{rng.randrange(1, 1000)}-{rng.choice(['S', 'M', 'L', 'XL'])}"
        else:
            name = f"{CYRILLIC_GOODS}-{rng.randrange(1, 100_000)}"
        names[name] = None
    return list(names)[:count]


def _plan_keys(rng: random.Random, keys: int) -> list[_KeyPlan]:
    targets: list[tuple[int, tuple[int, ...]]] = [(c, (c,)) for c in STANDALONE_CAMPAIGNS]
    targets += [(group[0], group) for group in WAREHOUSE_GROUPS]
    per_target = max(1, math.ceil(keys / len(targets)))
    plans = []
    for target, senders in targets:
        for sku in _sku_names(rng, per_target):
            plans.append(_KeyPlan(target, sku, senders, deltas_only=rng.random() < 0.3))
    return plans[:keys]


def _instant(plan: _KeyPlan, sent_ms: int, lag_ms: int) -> int:
    ms = sent_ms - lag_ms
    while ms in plan.instants:  # earlier, never later: an instant after sending is in the future
        ms -= 1
    plan.instants.add(ms)
    return ms


def _timestamp(rng: random.Random, start: datetime, ms: int) -> str:
    instant = start + timedelta(milliseconds=ms)
    if rng.random() < 0.5:
        return instant.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return instant.astimezone(MSK).isoformat(timespec="milliseconds")


def _valid_change(
    rng: random.Random, start: datetime, plan: _KeyPlan, message_ms: int, serial: int
) -> dict[str, Any]:
    sku = f"  {plan.sku} " if rng.random() < 0.05 else plan.sku  # trimmed by the service
    change: dict[str, Any] = {"campaign_id": rng.choice(plan.senders), "sku": sku}
    first = plan.planned == 0
    plan.planned += 1
    if not plan.deltas_only and (first or rng.random() < 0.2):
        # An inventory count is published a while after it was taken: it lands among deltas
        # that happened after it (they count) and before it (they do not).
        change["count"] = rng.randrange(0, 300)
        change["event_id"] = f"inventory-{serial}:{plan.sku}"
        lag = rng.randrange(1_000, 120_000)
    else:
        roll = 0.9 if first else rng.random()  # a key that only gets deltas starts with a receipt
        if roll < 0.77:
            change["delta"] = -rng.randrange(1, 4)  # a sale
        elif roll < 0.97:
            change["delta"] = rng.randrange(5, 51)  # a receipt
        else:
            change["delta"] = -rng.randrange(20, 61)  # a bulk order: may take it below zero
        if rng.random() > 0.1:  # most producers send an event id; the rest rely on the task id
            change["event_id"] = f"order-{serial}:line-{rng.randrange(1, 5)}"
        # Mostly on time, sometimes late (a retried producer): arrival order ≠ occurrence order.
        lag = rng.randrange(0, 2_000) if rng.random() < 0.85 else rng.randrange(5_000, 90_000)
    if plan.deltas_only and "delta" in change and rng.random() < 0.2:
        return change  # no occurred_at: the service's receipt time, harmless without counts
    ms = _instant(plan, message_ms, lag)
    change["occurred_at"] = _timestamp(rng, start, ms)
    return change


def _invalid_change(rng: random.Random, plan: _KeyPlan, kind: str, serial: int) -> dict[str, Any]:
    change: dict[str, Any] = {
        "campaign_id": plan.senders[0],
        "sku": plan.sku,
        "delta": -1,
        "event_id": f"bad-{serial}",
    }
    if kind == "sku":
        change["sku"] = f"{plan.sku[:2]}\x07{plan.sku[2:]}"  # a control character
    elif kind == "delta":
        change["delta"] = 1.5
    elif kind == "campaign_id":
        del change["campaign_id"]
    elif kind == "count":
        del change["delta"]
        change["count"] = "12"  # a numeric string is not an integer
    else:
        change[kind] = 7  # an unknown field
    return change


def message_count(changes: int, duration: float) -> int:
    """Messages at a steady pace over `duration`, none holding more than the contract allows."""
    paced = max(1, round(duration / MESSAGE_INTERVAL_SECONDS))
    return min(changes, max(paced, math.ceil(changes / CHANGES_PER_MESSAGE_MAX)))


def generate_stream(
    seed: int, changes: int, duration: float, start: datetime | None = None
) -> DemoStream:
    """`changes` change objects over about `duration` seconds: ~1% invalid, ~3% duplicates."""
    if changes < MIN_CHANGES:
        raise ValueError(f"the demo needs at least {MIN_CHANGES} changes, got {changes}")
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample, not a secret
    start = start or datetime.now(UTC)
    messages = message_count(changes, duration)
    interval_ms = round(duration * 1000 / messages)
    invalid = max(len(INVALID_KINDS), changes // 100)
    duplicates = changes * 3 // 100
    valid = changes - invalid - duplicates
    plans = _plan_keys(rng, max(1, valid // 4))
    # Some SKUs sell far more than others: a few keys get many changes, most get a few.
    weights = [1.0 / (rank + 1) ** 0.6 for rank in range(len(plans))]
    rng.shuffle(weights)

    slots: list[list[dict[str, Any]]] = [[] for _ in range(messages)]
    resendable: list[tuple[int, dict[str, Any]]] = []
    for serial, plan in enumerate(rng.choices(plans, weights, k=valid)):
        index = rng.randrange(messages)
        change = _valid_change(rng, start, plan, index * interval_ms, serial)
        slots[index].append(change)
        if "event_id" in change:
            resendable.append((index, change))
    for _ in range(duplicates):  # a producer's retry: the same event again, now or later
        index, change = rng.choice(resendable)
        slots[rng.randrange(index, messages)].append(dict(change))
    bad: list[list[tuple[dict[str, Any], str]]] = [[] for _ in range(messages)]
    for serial in range(invalid):
        kind = INVALID_KINDS[serial % len(INVALID_KINDS)]
        bad[rng.randrange(messages)].append(
            (_invalid_change(rng, rng.choice(plans), kind, serial), kind)
        )

    planned = []
    for index in range(messages):
        tagged = [(c, "") for c in slots[index]] + bad[index]
        rng.shuffle(tagged)
        planned.append(
            DemoMessage(
                at=index * interval_ms / 1000,
                changes=tuple(c for c, _ in tagged),
                invalid={pos: kind for pos, (_, kind) in enumerate(tagged) if kind},
            )
        )
    # A message that drew no change at all is not sent: the contract wants 1 … 10,000 changes.
    return DemoStream(start, tuple(m for m in planned if m.changes), duplicates=duplicates)
