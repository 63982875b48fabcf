"""The value formula: a key's stock is its latest absolute count plus the deltas strictly after it.

value(key) = count of the latest absolute change (latest by occurred_at; at the same instant the one
accepted later, i.e. with the higher sequence number) + the sum of the deltas whose occurred_at is
strictly later; with no absolute change, the sum of all deltas. Arrival order does not matter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime


@dataclass(frozen=True, slots=True)
class LoggedChange:
    """One accepted change of a key, with the sequence number the change log gave it."""

    seq: int
    occurred_at: datetime
    delta: int | None = None
    count: int | None = None


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the outbox keeps of a key so that new changes apply without reading its history."""

    abs_count: int | None = None
    abs_at: datetime | None = None
    abs_seq: int | None = None
    delta_sum: int = 0
    last_occurred_at: datetime | None = None

    @property
    def value(self) -> int:
        return (self.abs_count or 0) + self.delta_sum

    def counts_after_absolute(self, change: LoggedChange) -> bool:
        """True when a delta at this time is part of the value (strictly after the absolute)."""
        return self.abs_at is None or change.occurred_at > self.abs_at


def _absolute_order(change: LoggedChange) -> tuple[datetime, int]:
    return (change.occurred_at, change.seq)


def latest_absolute(changes: Iterable[LoggedChange]) -> LoggedChange | None:
    """The absolute change that wins among `changes`, or None when there is none."""
    absolutes = [c for c in changes if c.count is not None]
    return max(absolutes, key=_absolute_order) if absolutes else None


def new_winning_absolute(state: KeyState, new: Iterable[LoggedChange]) -> LoggedChange | None:
    """The newly accepted absolute change that replaces the state's, if any does."""
    candidate = latest_absolute(new)
    if candidate is None:
        return None
    if (
        state.abs_at is not None
        and state.abs_seq is not None
        and _absolute_order(candidate) <= (state.abs_at, state.abs_seq)
    ):
        return None
    return candidate


def apply_changes(
    state: KeyState, new: list[LoggedChange], deltas_after_new_absolute: int | None = None
) -> KeyState:
    """The key's state after `new` changes were accepted.

    When `new_winning_absolute(state, new)` is not None the caller must pass
    `deltas_after_new_absolute`: the sum of *all* the key's logged deltas (old and new) strictly
    after that absolute's time, which only the change log knows.
    """
    if not new:
        return state
    last = max(c.occurred_at for c in new)
    if state.last_occurred_at is not None:
        last = max(last, state.last_occurred_at)
    winner = new_winning_absolute(state, new)
    if winner is not None:
        if deltas_after_new_absolute is None:
            raise ValueError("a new absolute count needs the sum of the deltas after it")
        return KeyState(
            abs_count=winner.count,
            abs_at=winner.occurred_at,
            abs_seq=winner.seq,
            delta_sum=deltas_after_new_absolute,
            last_occurred_at=last,
        )
    added = sum(c.delta for c in new if c.delta is not None and state.counts_after_absolute(c))
    return replace(state, delta_sum=state.delta_sum + added, last_occurred_at=last)


def value_of(changes: Iterable[LoggedChange]) -> int:
    """The contract's formula over a key's complete set of accepted changes (the reference)."""
    changes = list(changes)
    base = latest_absolute(changes)
    if base is None:
        return sum(c.delta for c in changes if c.delta is not None)
    after = (c.delta for c in changes if c.delta is not None and c.occurred_at > base.occurred_at)
    return (base.count or 0) + sum(after)
