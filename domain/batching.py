"""Packing pending SKUs into Market requests: at most 2,000 SKUs and 512 KB of body each."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, TypeVar

from domain.market_rules import BODY_BYTES_MAX, SKUS_PER_REQUEST_MAX

T = TypeVar("T")

# `{"skus":[` + `]}` around the entries.
BODY_FRAME_BYTES = len(b'{"skus":[]}')
# One entry without its SKU, at the longest count and updatedAt we ever write, plus its comma.
_LONGEST_ENTRY = {
    "sku": "",
    "items": [{"count": 2_000_000_000, "updatedAt": "2026-11-29T07:21:10.700928+00:00"}],
}
ENTRY_OVERHEAD_BYTES = len(json.dumps(_LONGEST_ENTRY, separators=(",", ":"))) + 1 - len('""')


def sku_entry_bytes(sku: str) -> int:
    """An upper bound of the bytes the SKU's entry takes in a request body (UTF-8, escaped)."""
    return ENTRY_OVERHEAD_BYTES + len(json.dumps(sku, ensure_ascii=False).encode())


def pack(
    skus: Sequence[str],
    max_skus: int = SKUS_PER_REQUEST_MAX,
    max_bytes: int = BODY_BYTES_MAX,
) -> list[list[str]]:
    """Splits `skus`, in order, into batches within both limits."""
    sizes = [sku_entry_bytes(sku) for sku in skus]
    return [
        [skus[i] for i in batch]
        for batch in _pack_positions(sizes, BODY_FRAME_BYTES, max_skus, max_bytes)
    ]


def _pack_positions(
    sizes: Sequence[int], frame: int, max_entries: int, max_bytes: int
) -> list[list[int]]:
    """Positions of entries of `sizes` bytes, in order, cut into bodies of at most `max_entries`
    entries and `max_bytes` bytes (`frame` bytes of wrapping each)."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = frame
    for position, entry in enumerate(sizes):
        if current and (len(current) >= max_entries or size + entry > max_bytes):
            batches.append(current)
            current, size = [], frame
        current.append(position)
        size += entry
    if current:
        batches.append(current)
    return batches


# `{"skuItems":[` + `]}` around the v3 items.
V3_BODY_FRAME_BYTES = len(b'{"skuItems":[]}')
# One v3 item without its SKU and warehouse, at the longest count and updatedAt, plus its comma.
_LONGEST_V3_ITEM = {
    "sku": "",
    "partnerWarehouseId": 0,
    "count": 2_000_000_000,
    "updatedAt": "2026-11-29T07:21:10.700928+00:00",
}
V3_ITEM_OVERHEAD_BYTES = (
    len(json.dumps(_LONGEST_V3_ITEM, separators=(",", ":"))) + 1 - len('""') - len("0")
)


def v3_item_bytes(sku: str, warehouse_id: int) -> int:
    """An upper bound of the bytes one v3 item (sku, partnerWarehouseId) takes in a body."""
    return (
        V3_ITEM_OVERHEAD_BYTES
        + len(json.dumps(sku, ensure_ascii=False).encode())
        + len(str(warehouse_id))
    )


def pack_v3(
    items: Sequence[tuple[str, int]],
    max_items: int = SKUS_PER_REQUEST_MAX,
    max_bytes: int = BODY_BYTES_MAX,
) -> list[list[int]]:
    """Splits v3 items (sku, partnerWarehouseId), in order, into requests within both limits;
    each request is the list of its items' positions in `items`."""
    sizes = [v3_item_bytes(sku, warehouse) for sku, warehouse in items]
    return _pack_positions(sizes, V3_BODY_FRAME_BYTES, max_items, max_bytes)


def take_turns(candidates: Iterable[tuple[Hashable, Any, T]], limit: int) -> list[T]:
    """At most `limit` items, fair across their sources: every source's oldest first, then every
    one's second, and so on; within one turn the older first. Candidates are (source, age key,
    item), the age key any comparable value (a datetime)."""
    by_source: dict[Hashable, list[tuple[Any, T]]] = defaultdict(list)
    for source, key, item in candidates:
        by_source[source].append((key, item))
    turns: list[tuple[int, Any, int, T]] = []
    for n, entries in enumerate(by_source.values()):
        entries.sort(key=lambda entry: entry[0])
        turns.extend((turn, key, n, item) for turn, (key, item) in enumerate(entries))
    turns.sort(key=lambda t: t[:3])
    return [item for *_, item in turns[:limit]]
