"""Packing SKUs into requests and building their bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.batching import BODY_FRAME_BYTES, pack, sku_entry_bytes
from domain.market_payload import PendingStock, stocks_body
from domain.market_rules import BODY_BYTES_MAX, SKUS_PER_REQUEST_MAX

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_2001_skus_make_two_requests() -> None:
    batches = pack([f"SKU-{i}" for i in range(2001)])
    assert [len(b) for b in batches] == [2000, 1]


def test_2000_skus_of_255_characters_stay_under_512_kb() -> None:
    skus = [f"{i:05d}" + "x" * 250 for i in range(2000)]
    batches = pack(skus)
    assert len(batches) > 1
    for batch in batches:
        body = stocks_body([PendingStock(s, 2_000_000_000, 1, NOW) for s in batch], NOW)
        assert len(body) <= BODY_BYTES_MAX


@settings(max_examples=60)
@given(
    st.lists(
        st.text(
            alphabet=st.characters(exclude_categories=["Cs"], min_codepoint=0x20),
            min_size=1,
            max_size=255,
        ),
        min_size=1,
        max_size=3000,
        unique=True,
    )
)
def test_every_batch_body_fits_the_limits_and_order_is_kept(skus: list[str]) -> None:
    batches = pack(skus)
    assert [s for b in batches for s in b] == skus
    for batch in batches:
        assert 1 <= len(batch) <= SKUS_PER_REQUEST_MAX
        body = stocks_body([PendingStock(s, -5, 1, NOW - timedelta(days=3)) for s in batch], NOW)
        assert len(body) <= BODY_FRAME_BYTES + sum(sku_entry_bytes(s) for s in batch)
        assert len(body) <= BODY_BYTES_MAX
