"""The demo's sample stream and its expected state (CONTRACT.md section 2, computed apart from the
service): hand-made streams, the reference formula, and the properties of generated streams."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.changes import Change, validate_change
from domain.stock_value import LoggedChange, value_of
from stocksync.demo_stream import (
    CHANGES_PER_MESSAGE_MAX,
    DemoMessage,
    DemoStream,
    _Entry,
    clamp,
    expected_outcome,
    formula_value,
    generate_stream,
    message_count,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MSK = timezone(timedelta(hours=3))
GROUPS = ((2001, 2002),)


def iso(seconds: float, msk: bool = False) -> str:
    """T0 + seconds, written in UTC with `Z`, or in Moscow time with `+03:00`."""
    instant = T0 + timedelta(seconds=seconds)
    if msk:
        return instant.astimezone(MSK).isoformat()
    return instant.isoformat().replace("+00:00", "Z")


def stream_of(
    *messages: list[dict[str, Any]], invalid: dict[int, dict[int, str]] | None = None
) -> DemoStream:
    """A stream of the given messages, one second apart, starting at T0."""
    bad = invalid or {}
    return DemoStream(
        start=T0,
        messages=tuple(
            DemoMessage(at=float(i), changes=tuple(m), invalid=bad.get(i, {}))
            for i, m in enumerate(messages)
        ),
        groups=GROUPS,
    )


def change(campaign: int = 1001, sku: str = "A-1", **fields: Any) -> dict[str, Any]:
    return {"campaign_id": campaign, "sku": sku, **fields}


# --- the expected state of hand-made streams ---------------------------------------------------


def test_latest_count_plus_later_deltas_whatever_the_arrival_order() -> None:
    stream = stream_of(
        [change(delta=5, occurred_at=iso(30)), change(delta=-1, occurred_at=iso(5))],
        [change(count=10, occurred_at=iso(10))],  # arrives last, counted before the +5
    )

    assert expected_outcome(stream).expected == {1001: {"A-1": 15}}


def test_instants_compare_as_instants_across_offsets() -> None:
    # 12:59+03:00 is 09:59Z: the count at 10:00Z is the later one.
    stream = stream_of(
        [
            change(count=7, occurred_at=iso(-60, msk=True)),
            change(count=3, occurred_at=iso(0)),
            change(delta=1, occurred_at=iso(-30, msk=True)),
        ]
    )

    assert expected_outcome(stream).expected == {1001: {"A-1": 3}}


def test_a_group_is_stocked_under_its_first_campaign_only() -> None:
    stream = stream_of([change(2001, delta=4), change(2002, delta=6), change(1001, delta=1)])

    assert expected_outcome(stream).expected == {1001: {"A-1": 1}, 2001: {"A-1": 10}}


def test_a_duplicate_event_counts_once() -> None:
    sale = change(delta=-2, event_id="order-1", occurred_at=iso(5))
    stream = stream_of([change(count=10, occurred_at=iso(0)), sale], [dict(sale)])

    assert expected_outcome(stream).expected == {1001: {"A-1": 8}}


def test_changes_without_event_id_never_count_as_duplicates() -> None:
    stream = stream_of([change(delta=1)], [change(delta=1)])

    assert expected_outcome(stream).expected == {1001: {"A-1": 2}}


def test_rejected_changes_have_no_effect_and_make_no_key() -> None:
    stream = stream_of(
        [change(delta=3), change(sku="B\x07", delta=1), change(delta=1.5)],
        invalid={0: {1: "sku", 2: "delta"}},
    )

    assert expected_outcome(stream).expected == {1001: {"A-1": 3}}


def test_counts_are_clamped_at_zero_and_skus_trimmed() -> None:
    stream = stream_of([change(sku=" A-1 ", delta=-5), change(sku="0557722", count=0)])

    assert expected_outcome(stream).expected == {1001: {"A-1": 0, "0557722": 0}}


def test_a_key_settles_with_the_first_message_after_which_its_count_stays() -> None:
    stream = stream_of(
        [change(count=10, occurred_at=iso(10))],
        [change(delta=2, occurred_at=iso(20))],
        [change(delta=-1, occurred_at=iso(5))],  # before the count: changes nothing
    )

    outcome = expected_outcome(stream)

    assert outcome.expected == {1001: {"A-1": 12}}
    assert outcome.settled_by == {(1001, "A-1"): 1}


def test_clamp_keeps_counts_within_the_market_range() -> None:
    assert [clamp(-3), clamp(0), clamp(7), clamp(3_000_000_000)] == [0, 0, 7, 2_000_000_000]


# --- the demo's formula against the service's reference ------------------------------------------

_changes = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=20),  # minutes after T0: ties happen
        st.booleans(),  # absolute count?
        st.integers(min_value=-50, max_value=50),
    ),
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(_changes)
def test_the_demo_formula_agrees_with_the_reference_value_of(
    changes: list[tuple[int, bool, int]],
) -> None:
    entries = [
        _Entry(
            T0 + timedelta(minutes=m), seq, 0, None if is_count else n, abs(n) if is_count else None
        )
        for seq, (m, is_count, n) in enumerate(changes)
    ]
    logged = [LoggedChange(e.order, e.at, e.delta, e.count) for e in entries]

    assert formula_value(entries) == value_of(logged)


# --- generated streams --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream() -> DemoStream:
    return generate_stream(seed=7, changes=2000, duration=10, start=T0)


def test_the_stream_holds_exactly_the_changes_asked_for(stream: DemoStream) -> None:
    assert stream.total_changes == 2000
    assert stream.invalid_changes == 20
    assert stream.duplicates == 60
    assert len(stream.messages) == 20
    assert all(1 <= len(m.changes) <= CHANGES_PER_MESSAGE_MAX for m in stream.messages)


def test_the_same_seed_gives_the_same_stream(stream: DemoStream) -> None:
    assert generate_stream(seed=7, changes=2000, duration=10, start=T0) == stream
    assert generate_stream(seed=8, changes=2000, duration=10, start=T0) != stream


def test_the_service_accepts_the_valid_changes_and_rejects_the_invalid_for_their_field(
    stream: DemoStream,
) -> None:
    for message in stream.messages:
        now = stream.planned_send(stream.messages.index(message))
        for position, raw in enumerate(message.changes):
            result = validate_change(raw, now)
            if position in message.invalid:
                assert isinstance(result, str), raw
                assert result.startswith(f"{message.invalid[position]}:"), result
            else:
                assert isinstance(result, Change), (raw, result)


def test_every_invalid_kind_is_sent(stream: DemoStream) -> None:
    kinds = Counter(kind for m in stream.messages for kind in m.invalid.values())

    assert set(kinds) == {"sku", "delta", "campaign_id", "count", "warehouse_id"}


def test_the_stream_has_what_makes_the_demo_realistic(stream: DemoStream) -> None:
    valid = [c for m in stream.messages for i, c in enumerate(m.changes) if i not in m.invalid]
    event_ids = Counter(c["event_id"] for c in valid if "event_id" in c)
    stamps = [c["occurred_at"] for c in valid if "occurred_at" in c]
    arrivals: dict[tuple[int, str], list[datetime]] = defaultdict(list)
    for c in valid:
        if "occurred_at" in c:
            arrivals[(c["campaign_id"], c["sku"].strip())].append(
                datetime.fromisoformat(c["occurred_at"])
            )

    assert sum(n - 1 for n in event_ids.values()) == stream.duplicates
    assert any("event_id" not in c for c in valid)
    assert any("occurred_at" not in c for c in valid)
    assert any("count" in c for c in valid) and any("delta" in c for c in valid)
    assert {c["campaign_id"] for c in valid} >= {1001, 1002, 2001, 2002, 3001}
    assert any(s.endswith("Z") for s in stamps) and any(s.endswith("+03:00") for s in stamps)
    assert any(times != sorted(times) for times in arrivals.values())  # out of order per key
    assert any(c["sku"] != c["sku"].strip() for c in valid)


def test_no_change_occurs_after_its_message_is_due(stream: DemoStream) -> None:
    for index, message in enumerate(stream.messages):
        due = stream.planned_send(index)
        for raw in message.changes:
            if "occurred_at" in raw:
                assert datetime.fromisoformat(raw["occurred_at"]) <= due


def test_the_expected_state_covers_every_campaign_but_the_groups_second(
    stream: DemoStream,
) -> None:
    outcome = expected_outcome(stream)

    assert set(outcome.expected) == {1001, 1002, 2001, 3001}
    assert 0 in {count for skus in outcome.expected.values() for count in skus.values()}
    assert set(outcome.settled_by) == {
        (campaign, sku) for campaign, skus in outcome.expected.items() for sku in skus
    }


def test_messages_are_paced_and_never_exceed_the_contract_limit() -> None:
    assert message_count(3000, 15) == 30
    assert message_count(3000, 0) == 1
    assert message_count(60, 15) == 30
    assert message_count(100_000, 1) == 10
    assert message_count(10, 15) == 10


def test_too_few_changes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        generate_stream(seed=1, changes=10, duration=1, start=T0)
