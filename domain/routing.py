"""Carrying keys over a change of warehouse groups: which key groups move or are copied where.

A campaign's *route* is the group key its changes are stored under (its group's first campaign,
which is also the campaign the group's stock is sent to); a campaign without one routes to itself.
Keys live at group keys, so a change of routing is planned per old group key:

- the old group's keys follow its first campaign: they *move* to that campaign's new group key
  (a reordered group, a group merged into another); where the target already holds the SKU, the
  target's key is kept (the target's own keys first, then movers in the new group's order);
- a campaign leaving for a group that holds no keys (it is alone now, or first of a new group)
  gets a *copy* of its old group's keys: it shared that stock until now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Carry(StrEnum):
    """How one old group's keys reach a new group key."""

    MOVE = "move"
    COPY = "copy"


@dataclass(frozen=True, slots=True)
class KeyTransfer:
    """The keys stored under `source` go to `target` (moved, or copied)."""

    carry: Carry
    source: int
    target: int


def routes_of(groups: list[list[int]]) -> dict[int, int]:
    """Every grouped campaign to its group's key, the group's first campaign."""
    return {campaign: group[0] for group in groups for campaign in group}


def differ(stored: Mapping[int, int], configured: Mapping[int, int]) -> bool:
    """True when the two routings send some campaign's changes to different group keys."""
    campaigns = set(stored) | set(configured)
    return any(stored.get(c, c) != configured.get(c, c) for c in campaigns)


def plan(stored: Mapping[int, int], configured: Mapping[int, int]) -> list[KeyTransfer]:
    """The transfers that carry the keys from the `stored` routing to the `configured` one, in
    the order to carry them out: copies (read from the source before it moves), then moves."""
    campaigns = set(stored) | set(configured)

    def old(c: int) -> int:
        return stored.get(c, c)

    def new(c: int) -> int:
        return configured.get(c, c)

    old_keys = sorted({old(c) for c in campaigns})
    targets = {new(g) for g in old_keys}
    copies: list[KeyTransfer] = []
    moves: list[KeyTransfer] = []
    for g in old_keys:
        if new(g) != g:
            moves.append(KeyTransfer(Carry.MOVE, g, new(g)))
        fresh = sorted(
            {new(c) for c in campaigns if old(c) == g and c != g} - targets - set(old_keys)
        )
        copies.extend(KeyTransfer(Carry.COPY, g, n) for n in fresh)
    # Movers into one target in the order the group lists them: an earlier one keeps a contested
    # SKU (`configured` keeps the configured order, `routes_of` builds it so).
    listed = {c: i for i, c in enumerate(configured)}
    moves.sort(key=lambda m: (m.target, listed.get(m.source, len(listed)), m.source))
    return copies + moves
