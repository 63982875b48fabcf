"""The value formula (CONTRACT.md section 2): the reference `value_of` and the incremental
`apply_changes` the outbox uses, by hand-made cases and by a property over random arrivals."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.stock_value import (
    KeyState,
    LoggedChange,
    apply_changes,
    latest_absolute,
    new_winning_absolute,
    value_of,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
MSK = timezone(timedelta(hours=3))


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def deltas_after(changes: list[LoggedChange], instant: datetime) -> int:
    """What the change log answers: the sum of all the key's deltas strictly after `instant`."""
    return sum(c.delta for c in changes if c.delta is not None and c.occurred_at > instant)


def apply_in_batches(batches: list[list[LoggedChange]]) -> KeyState:
    """Feeds batches to `apply_changes` the way the outbox does, one message after another."""
    state = KeyState()
    logged: list[LoggedChange] = []
    for batch in batches:
        logged.extend(batch)
        winner = new_winning_absolute(state, batch)
        after = deltas_after(logged, winner.occurred_at) if winner else None
        state = apply_changes(state, batch, after)
    return state


# --- hand-made cases ------------------------------------------------------------------------


def test_absolute_count_then_later_deltas_add_up() -> None:
    changes = [
        LoggedChange(1, at(0), count=10),
        LoggedChange(2, at(1), delta=-2),
        LoggedChange(3, at(2), delta=5),
    ]
    assert value_of(changes) == 13
    assert apply_in_batches([[c] for c in changes]).value == 13


def test_without_an_absolute_count_the_value_is_the_sum_of_all_deltas() -> None:
    changes = [LoggedChange(1, at(5), delta=3), LoggedChange(2, at(-5), delta=4)]
    assert value_of(changes) == 7
    assert apply_in_batches([changes]).value == 7


def test_delta_after_newer_count_changes_nothing() -> None:
    # Given a count of 10 at 10:05
    count = LoggedChange(1, at(5), count=10)
    # When a delta that happened at 10:01 arrives after it
    late_delta = LoggedChange(2, at(1), delta=-3)
    # Then the value is still the count
    assert value_of([count, late_delta]) == 10
    assert apply_in_batches([[count], [late_delta]]).value == 10


def test_newer_count_arriving_after_deltas_drops_the_older_deltas() -> None:
    # Given deltas at 10:00 and 10:10, then a count taken at 10:05
    early, late = LoggedChange(1, at(0), delta=4), LoggedChange(2, at(10), delta=-1)
    count = LoggedChange(3, at(5), count=20)
    # Then only the delta after the count is added to it
    assert value_of([early, late, count]) == 19
    assert apply_in_batches([[early], [late], [count]]).value == 19


def test_older_count_arriving_late_does_not_replace_the_newer_one() -> None:
    newer, older = LoggedChange(1, at(5), count=10), LoggedChange(2, at(0), count=99)
    state = apply_in_batches([[newer]])
    assert new_winning_absolute(state, [older]) is None
    assert apply_in_batches([[newer], [older]]).value == 10
    assert value_of([newer, older]) == 10


def test_delta_at_the_same_instant_as_the_count_is_not_after_it() -> None:
    changes = [LoggedChange(1, at(0), count=10), LoggedChange(2, at(0), delta=5)]
    assert value_of(changes) == 10
    assert apply_in_batches([[changes[0]], [changes[1]]]).value == 10
    assert apply_in_batches([[changes[1]], [changes[0]]]).value == 10


def test_two_counts_at_the_same_instant_the_one_accepted_later_wins() -> None:
    first, second = LoggedChange(1, at(0), count=5), LoggedChange(2, at(0), count=9)
    assert value_of([second, first]) == 9
    assert apply_in_batches([[first], [second]]).value == 9
    assert apply_in_batches([[second, first]]).value == 9
    assert latest_absolute([second, first]) == second


def test_totals_can_be_negative() -> None:
    assert value_of([LoggedChange(1, at(0), delta=-5), LoggedChange(2, at(1), delta=2)]) == -3
    changes = [LoggedChange(1, at(0), count=1), LoggedChange(2, at(1), delta=-4)]
    assert value_of(changes) == -3
    assert apply_in_batches([[c] for c in changes]).value == -3


def test_instants_are_compared_across_offsets() -> None:
    # 12:00+03:00 is 09:00Z: before 10:00Z although its wall-clock reads later
    moscow_noon = datetime(2026, 11, 28, 12, 0, tzinfo=MSK)
    utc_ten = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    delta_then_count = [LoggedChange(1, moscow_noon, delta=7), LoggedChange(2, utc_ten, count=3)]
    assert value_of(delta_then_count) == 3
    assert apply_in_batches([[c] for c in delta_then_count]).value == 3
    # and of two counts the one at 10:00Z is the latest, whatever the arrival order
    counts = [LoggedChange(1, utc_ten, count=3), LoggedChange(2, moscow_noon, count=50)]
    assert value_of(counts) == 3
    assert apply_in_batches([[c] for c in counts]).value == 3


def test_last_occurred_at_is_the_latest_instant_whatever_the_order() -> None:
    moscow_noon = datetime(2026, 11, 28, 12, 0, tzinfo=MSK)  # 09:00Z
    state = apply_in_batches(
        [[LoggedChange(1, at(0), delta=1)], [LoggedChange(2, moscow_noon, delta=1)]]
    )
    assert state.last_occurred_at == at(0)


def test_new_absolute_count_without_the_deltas_after_it_is_an_error() -> None:
    with pytest.raises(ValueError, match="sum of the deltas after it"):
        apply_changes(KeyState(), [LoggedChange(1, at(0), count=1)])


def test_no_new_changes_keep_the_state() -> None:
    state = KeyState(abs_count=4, abs_at=at(0), abs_seq=1, delta_sum=2, last_occurred_at=at(1))
    assert apply_changes(state, []) is state


# --- property: any arrival order and any split gives the reference value ---------------------

_offsets = st.sampled_from([UTC, MSK, timezone(timedelta(hours=-5, minutes=-30))])


@st.composite
def _changes(draw: st.DrawFn) -> list[tuple[bool, int, datetime]]:
    """(is_count, amount, occurred_at) triples; few distinct instants so that ties happen."""
    items = draw(
        st.lists(
            st.tuples(
                st.booleans(),
                st.integers(min_value=-50, max_value=50),
                st.integers(min_value=0, max_value=6),
                _offsets,
            ),
            min_size=1,
            max_size=25,
        )
    )
    return [
        (is_count, abs(n) if is_count else n, at(m).astimezone(tz)) for is_count, n, m, tz in items
    ]


@st.composite
def _arrivals(draw: st.DrawFn) -> list[list[LoggedChange]]:
    """The changes in a random arrival order (seq = acceptance order), cut into random batches."""
    items = draw(st.permutations(draw(_changes())))
    logged = [
        LoggedChange(seq, when, count=n) if is_count else LoggedChange(seq, when, delta=n)
        for seq, (is_count, n, when) in enumerate(items, start=1)
    ]
    cuts = (
        sorted(draw(st.sets(st.integers(min_value=1, max_value=len(logged) - 1))))
        if len(logged) > 1
        else []
    )
    bounds = [0, *cuts, len(logged)]
    return [logged[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None)
@given(_arrivals())
def test_apply_changes_in_any_order_and_split_equals_value_of(
    batches: list[list[LoggedChange]],
) -> None:
    state = KeyState()
    seen: list[LoggedChange] = []
    for batch in batches:
        seen.extend(batch)
        winner = new_winning_absolute(state, batch)
        after = deltas_after(seen, winner.occurred_at) if winner else None
        state = apply_changes(state, batch, after)
        # after every message, not only at the end
        assert state.value == value_of(seen)
        assert state.last_occurred_at == max(c.occurred_at for c in seen)
    reference = latest_absolute(seen)
    assert (state.abs_seq, state.abs_count) == (
        (reference.seq, reference.count) if reference else (None, None)
    )
