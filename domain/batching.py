"""Packing pending SKUs into Market requests: at most 2,000 SKUs and 512 KB of body each."""

from __future__ import annotations

import json
from collections.abc import Sequence

from domain.market_rules import BODY_BYTES_MAX, SKUS_PER_REQUEST_MAX

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
    batches: list[list[str]] = []
    current: list[str] = []
    size = BODY_FRAME_BYTES
    for sku in skus:
        entry = sku_entry_bytes(sku)
        if current and (len(current) >= max_skus or size + entry > max_bytes):
            batches.append(current)
            current, size = [], BODY_FRAME_BYTES
        current.append(sku)
        size += entry
    if current:
        batches.append(current)
    return batches
