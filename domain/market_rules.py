"""The Market's own rules for `PUT /v2/campaigns/{id}/offers/stocks`, as constants and checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta

SKU_PATTERN = re.compile(r"^(?=.*\S.*)[^\x00-\x08\x0A-\x1f\x7f]{1,255}$")
SKU_MAX_LENGTH = 255
COUNT_MAX = 2_000_000_000
DELTA_MAX_ABS = 2_000_000_000
SKUS_PER_REQUEST_MAX = 2_000
BODY_BYTES_MAX = 512 * 1024
RATE_LIMIT_SKUS_PER_MINUTE = 100_000
PARALLEL_REQUESTS_MAX = 4
# The Market refuses an updatedAt older than a day; we keep an hour of margin for clocks and queues.
UPDATED_AT_MAX_AGE = timedelta(hours=23)


def normalize_sku(raw: str) -> str:
    """The SKU as the Market compares it: leading and trailing whitespace removed, nothing else."""
    return raw.strip()


def sku_is_valid(sku: str) -> bool:
    """True when `sku` (already normalized) matches the Market's SKU pattern."""
    return SKU_PATTERN.fullmatch(sku) is not None


def clamp_count(value: int) -> int:
    """The stock value as the Market accepts it: 0 … 2,000,000,000."""
    return max(0, min(COUNT_MAX, value))


def updated_at_for_sending(occurred_at: datetime, now: datetime) -> datetime:
    """Moves `occurred_at` into the Market's window: never after `now`, never before now - 23 h."""
    return max(now - UPDATED_AT_MAX_AGE, min(occurred_at, now))


_QUOTED = re.compile(r"'([^']*)'")


def skus_named(messages: list[str], skus: set[str]) -> dict[str, str]:
    """The SKUs of a batch that the Market's 400 messages name (`Stock for 'SKU' …`), with them."""
    named: dict[str, str] = {}
    for message in messages:
        for quoted in _QUOTED.findall(message):
            if quoted in skus:
                named.setdefault(quoted, message)
    return named


def items_named(messages: list[str], items: Mapping[str, tuple[str, int]]) -> dict[str, str]:
    """The v3 items (label -> (sku, warehouse)) that 400 messages name, with the message.

    A message names an item when it quotes the item's SKU and, if it quotes any warehouse of the
    batch, the item's warehouse too (`Duplicate shop-sku 'A' for warehouse '7001'`); a message
    quoting no SKU of the batch names every item of the warehouses it quotes (`Warehouse '7009'
    is not a warehouse of businessId 901`).
    """
    named: dict[str, str] = {}
    for message in messages:
        quoted = set(_QUOTED.findall(message))
        skus = {sku for sku, _ in items.values() if sku in quoted}
        warehouses = {w for _, w in items.values() if str(w) in quoted}
        for label, (sku, warehouse) in items.items():
            if sku in skus:
                hit = not warehouses or warehouse in warehouses
            else:
                hit = not skus and warehouse in warehouses
            if hit:
                named.setdefault(label, message)
    return named


def answer_kind(status: int) -> str:
    """What a Market status means for a push: ok, refused (400), parked (401/403/404),
    rate_limited (420), retry (5xx, 0 = no answer, 3xx: a redirect is never followed, and a
    misrouted proxy may heal) or unexpected (any other)."""
    if 200 <= status < 300:
        return "ok"
    if status == 400:
        return "refused"
    if status in (401, 403, 404):
        return "parked"
    if status == 420:
        return "rate_limited"
    if status == 0 or status >= 500 or 300 <= status < 400:
        return "retry"
    return "unexpected"
