"""Ingest into real PostgreSQL through `worker.ingest.store_message` (CONTRACT.md section 2):
the stored value follows the formula whatever the arrival order, exactly once, keys as specified."""

from __future__ import annotations

import itertools
import json
import random
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text

from domain.changes import parse_message
from domain.stock_value import LoggedChange, value_of
from worker.ingest import StoreResult, store_message, store_unreadable
from worker.settings import Settings

NOW = datetime.now(UTC).replace(microsecond=0)
BASE = NOW - timedelta(hours=6)
MSK = timezone(timedelta(hours=3))


def alone(campaign_id: int) -> int:
    return campaign_id


def store(
    engine: Engine,
    changes: list[Any],
    task_id: str | None = None,
    group_of: Callable[[int], int] = alone,
) -> StoreResult:
    """One `stocks.submit` message, parsed and committed as the task does it."""
    parsed = parse_message((), {"changes": changes}, datetime.now(UTC))
    return store_message(
        engine, task_id or str(uuid.uuid4()), parsed.accepted, parsed.rejected, group_of
    )


def stock_rows(engine: Engine) -> dict[tuple[int, str], tuple[int, int]]:
    """(group, sku) → (value, version)."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT group_id, sku, value, version FROM stock"))
        return {(g, s): (v, ver) for g, s, v, ver in rows}


def value(engine: Engine, group_id: int, sku: str) -> int | None:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT value FROM stock WHERE group_id = :g AND sku = :s"),
            {"g": group_id, "s": sku},
        ).scalar_one_or_none()
        return None if found is None else int(found)


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def rejected_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT task_id, position, campaign_id, raw, reason FROM rejected ORDER BY id")
        )
        return [tuple(r) for r in rows]


def delta(sku: str, amount: Any, **extra: Any) -> dict[str, Any]:
    return {"campaign_id": 1001, "sku": sku, "delta": amount, **extra}


def count(sku: str, amount: Any, **extra: Any) -> dict[str, Any]:
    return {"campaign_id": 1001, "sku": sku, "count": amount, **extra}


# --- property: any arrival order and any split of messages gives the formula's value ----------


@dataclass(frozen=True)
class _Planned:
    sku: str
    is_count: bool
    amount: int
    minute: int
    offset: timezone
    event_id: str | None

    def raw(self) -> dict[str, Any]:
        when = (BASE + timedelta(minutes=self.minute)).astimezone(self.offset)
        field = "count" if self.is_count else "delta"
        raw: dict[str, Any] = {
            "campaign_id": 7,
            "sku": self.sku,
            field: self.amount,
            "occurred_at": when.isoformat(),
        }
        if self.event_id is not None:
            raw["event_id"] = self.event_id
        return raw


_run = itertools.count()


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[list[list[_Planned]], list[int]]:
    """Changes for a few keys in random order, cut into messages; some messages redelivered."""
    prefix = f"p{next(_run)}-"
    skus = [prefix + name for name in draw(st.sets(st.sampled_from("ABC"), min_size=1))]
    offsets = st.sampled_from([UTC, MSK, timezone(timedelta(hours=-5))])
    planned = draw(
        st.lists(
            st.builds(
                _Planned,
                sku=st.sampled_from(skus),
                is_count=st.booleans(),
                amount=st.integers(min_value=0, max_value=60),
                minute=st.integers(min_value=0, max_value=5),
                offset=offsets,
                event_id=st.none(),
            ),
            min_size=1,
            max_size=30,
        )
    )
    planned = [
        p if p.is_count else _Planned(p.sku, False, p.amount - 30, p.minute, p.offset, None)
        for p in planned
    ]
    # Half the changes carry an event id; some of those are sent again later as duplicates.
    with_ids = [
        _Planned(p.sku, p.is_count, p.amount, p.minute, p.offset, f"{prefix}e{i}")
        if draw(st.booleans())
        else p
        for i, p in enumerate(planned)
    ]
    duplicates = [p for p in with_ids if p.event_id is not None and draw(st.booleans())]
    order = draw(st.permutations(with_ids + duplicates))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(order) - 1)), max_size=8)))
    bounds = sorted({0, *[c for c in cuts if c < len(order)], len(order)})
    messages = [list(order[a:b]) for a, b in itertools.pairwise(bounds)]
    redelivered = draw(st.lists(st.integers(0, len(messages) - 1), max_size=3))
    return messages, redelivered


def _expected(messages: list[list[_Planned]]) -> dict[str, int]:
    """value_of over the changes the contract accepts: first of each event id, in arrival order
    (a redelivered message adds nothing, so redeliveries are not replayed here)."""
    seen_events: set[str] = set()
    accepted: dict[str, list[LoggedChange]] = {}
    seq = itertools.count(1)
    for message in messages:
        for p in message:
            if p.event_id is not None:
                if p.event_id in seen_events:
                    continue
                seen_events.add(p.event_id)
            when = BASE + timedelta(minutes=p.minute)
            accepted.setdefault(p.sku, []).append(
                LoggedChange(next(seq), when, count=p.amount)
                if p.is_count
                else LoggedChange(next(seq), when, delta=p.amount)
            )
    return {sku: value_of(changes) for sku, changes in accepted.items()}


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_deliveries())
def test_stored_value_equals_the_formula_in_any_order_split_and_redelivery(
    engine: Engine, plan: tuple[list[list[_Planned]], list[int]]
) -> None:
    # Given changes for a few keys (fresh SKUs per example), cut into messages in random order
    messages, redelivered = plan
    task_ids = [str(uuid.uuid4()) for _ in messages]
    # When each message is stored, and some are delivered again with the same task id
    for task_id, message in zip(task_ids, messages, strict=True):
        store(engine, [p.raw() for p in message], task_id)
    for index in redelivered:
        store(engine, [p.raw() for p in messages[index]], task_ids[index])
    # Then every key holds the formula's value over its distinct changes
    expected = _expected(messages)
    stored = stock_rows(engine)
    assert {sku: stored[(7, sku)][0] for sku in expected} == expected
    distinct = (
        sum(len(m) for m in messages)
        - sum(1 for m in messages for p in m if p.event_id is not None)
        + len({p.event_id for m in messages for p in m if p.event_id is not None})
    )
    prefix = next(iter(expected)).split("-")[0] + "-"
    assert scalar(engine, "SELECT count(*) FROM change_log WHERE sku LIKE :p", p=prefix + "%") == (
        distinct
    )


# --- idempotency ----------------------------------------------------------------------------


def test_change_with_an_event_id_seen_before_has_no_effect(engine: Engine) -> None:
    # Given a delta accepted under event id "order-77:line-1"
    first = store(engine, [delta("A", -2, event_id="order-77:line-1"), count("B", 4)])
    # When another message carries the same event id again, with a new one
    again = store(engine, [delta("A", -2, event_id="order-77:line-1"), delta("A", 5, event_id="x")])
    # Then only the new one applies
    assert (first.applied, first.duplicates) == (2, 0)
    assert (again.applied, again.duplicates) == (1, 1)
    assert value(engine, 1001, "A") == 3
    assert scalar(engine, "SELECT count(*) FROM change_log") == 3


def test_event_id_repeated_within_one_message_applies_once(engine: Engine) -> None:
    result = store(engine, [delta("A", 10, event_id="e"), delta("A", 10, event_id="e")])
    assert (result.applied, result.duplicates) == (1, 1)
    assert value(engine, 1001, "A") == 10


def test_duplicate_event_id_with_different_content_is_still_a_duplicate(engine: Engine) -> None:
    store(engine, [count("A", 5, event_id="inv-1")])
    store(engine, [count("A", 500, event_id="inv-1")])
    assert value(engine, 1001, "A") == 5


def test_same_message_stored_twice_applies_once(engine: Engine) -> None:
    # Given a message without event ids (keyed by task id and position)
    changes = [delta("A", 3), delta("A", 3), count("B", 8, occurred_at=BASE.isoformat())]
    changes.append(delta("B", -1))
    # When it is delivered twice under the same task id (a redelivery)
    first = store(engine, changes, "task-1")
    second = store(engine, changes, "task-1")
    # Then it applied once; a new task id with the same content is a new message
    assert (first.applied, second.applied, second.duplicates) == (4, 0, 4)
    assert (value(engine, 1001, "A"), value(engine, 1001, "B")) == (6, 7)
    store(engine, changes, "task-2")
    assert value(engine, 1001, "A") == 12


def test_event_ids_are_compared_exactly_and_nul_is_kept(engine: Engine) -> None:
    store(engine, [delta("A", 1, event_id="e"), delta("A", 1, event_id="e ")])
    store(engine, [delta("A", 1, event_id="e\x00"), delta("A", 1, event_id="j:e")])
    store(engine, [delta("A", 100, event_id="e\x00")])
    assert value(engine, 1001, "A") == 4


# --- keys -----------------------------------------------------------------------------------


def test_sku_with_surrounding_spaces_is_the_same_key(engine: Engine) -> None:
    store(engine, [delta(" A ", 2), delta("A", 3), delta("\tA", 4)])
    assert stock_rows(engine) == {(1001, "A"): (9, 1)}


def test_leading_zeros_and_case_make_different_keys(engine: Engine) -> None:
    store(engine, [count("0557722", 40), count("557722", 7), delta("a", 1), delta("A", 2)])
    assert {k: v for k, (v, _) in stock_rows(engine).items()} == {
        (1001, "0557722"): 40,
        (1001, "557722"): 7,
        (1001, "a"): 1,
        (1001, "A"): 2,
    }


def test_campaigns_of_one_warehouse_group_share_the_first_campaigns_key(engine: Engine) -> None:
    # Given campaigns 1001 and 1002 in one warehouse group, 2001 alone
    group_of = Settings(warehouse_groups=[[1001, 1002], [3001, 3002]]).group_of
    # When changes for the same SKU arrive through both campaigns and through 2001
    store(
        engine,
        [
            {"campaign_id": 1002, "sku": "A", "count": 10, "occurred_at": BASE.isoformat()},
            {"campaign_id": 1001, "sku": "A", "delta": -3},
            {"campaign_id": 1002, "sku": "A", "delta": -1},
            {"campaign_id": 2001, "sku": "A", "delta": 5},
            {"campaign_id": 3002, "sku": "A", "delta": 1},
        ],
        group_of=group_of,
    )
    # Then the group's changes land on one key named by the first campaign
    assert {k: v for k, (v, _) in stock_rows(engine).items()} == {
        (1001, "A"): 6,
        (2001, "A"): 5,
        (3001, "A"): 1,
    }
    campaigns = scalar(
        engine, "SELECT array_agg(DISTINCT campaign_id ORDER BY campaign_id) FROM change_log"
    )
    assert campaigns == [1001, 1002, 2001, 3002]


# --- pending keys ---------------------------------------------------------------------------


def test_first_count_of_zero_makes_the_key_pending(engine: Engine) -> None:
    # Given a new key whose first change is a count of 0 (the value does not move from 0)
    store(engine, [count("A", 0)])
    # Then it is pending all the same, so that the Market is told 0
    assert stock_rows(engine) == {(1001, "A"): (0, 1)}
    assert scalar(engine, "SELECT count(*) FROM stock WHERE version > acked_version") == 1


def test_version_grows_only_when_the_value_changes(engine: Engine) -> None:
    store(engine, [count("A", 5)])
    store(engine, [count("A", 5)])  # same value: not a new version
    assert stock_rows(engine)[(1001, "A")] == (5, 1)
    store(engine, [delta("A", 1)])
    assert stock_rows(engine)[(1001, "A")] == (6, 2)
    # a delta older than the count, and a zero delta, change no value: no new version
    store(engine, [delta("A", 1, occurred_at=(BASE - timedelta(days=1)).isoformat())])
    store(engine, [delta("A", 0)])
    assert stock_rows(engine)[(1001, "A")] == (6, 2)
    store(engine, [count("A", 0)])
    assert stock_rows(engine)[(1001, "A")] == (0, 3)


def test_last_occurred_at_is_the_latest_accepted_instant(engine: Engine) -> None:
    late = datetime(2026, 11, 28, 12, 0, tzinfo=MSK)  # 09:00Z
    store(engine, [delta("A", 1, occurred_at="2026-11-28T10:00:00Z")])
    store(engine, [delta("A", 1, occurred_at=late.isoformat())])
    stored = scalar(engine, "SELECT last_occurred_at FROM stock")
    assert stored == datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


# --- refusals -------------------------------------------------------------------------------


def test_rejected_changes_are_stored_with_raw_content_and_reason(engine: Engine) -> None:
    # Given a message with two broken changes among valid ones
    bad_float = delta("B", 1.5)
    bad_unknown = {"campaign_id": 1002, "sku": "C\x00", "delta": 1, "colour": "red"}
    result = store(engine, [delta("A", 1), bad_float, bad_unknown, count("D", 3)], "task-r")
    # Then the valid ones are applied and the others kept with raw content, campaign and reason
    assert (result.applied, result.rejected) == (2, 2)
    assert {k: v for k, (v, _) in stock_rows(engine).items()} == {(1001, "A"): 1, (1001, "D"): 3}
    rows = rejected_rows(engine)
    assert [(t, p, c) for t, p, c, _, _ in rows] == [("task-r", 1, 1001), ("task-r", 2, 1002)]
    assert json.loads(rows[0][3]) == bad_float
    assert json.loads(rows[1][3]) == bad_unknown
    assert rows[0][4].startswith("delta: must be an integer")
    assert "colour: is not a known field" in rows[1][4]
    assert "sku: must match the Market pattern" not in rows[1][4]  # type rules come first


def test_rejections_of_a_redelivered_message_are_stored_once(engine: Engine) -> None:
    store(engine, [delta("A", 1), delta("B", "1")], "task-x")
    store(engine, [delta("A", 1), delta("B", "1")], "task-x")
    assert len(rejected_rows(engine)) == 1


def test_unreadable_message_is_stored_with_raw_content_and_reason(engine: Engine) -> None:
    raw = {"args": [], "kwargs": {"changes": "not a list", "extra": 1}}
    store_unreadable(engine, "task-u", raw, "arguments: unknown keyword arguments ['extra']")
    assert rejected_rows(engine) == [
        (
            "task-u",
            -1,
            None,
            json.dumps(raw),
            "arguments: unknown keyword arguments ['extra']",
        )
    ]


def test_changes_the_database_cannot_hold_are_rejected_and_the_rest_applied(
    engine: Engine,
) -> None:
    # Given a message where some changes pass the type rules but cannot be stored as they are
    hostile = [
        {"campaign_id": 2**63, "sku": "A", "delta": 1},  # beyond bigint
        delta("A\ud800", 1),  # a lone surrogate is not UTF-8 text
        delta("A", 1, event_id="e\udfff"),
        delta("A", 1, occurred_at="0001-01-01T00:00:00+01:00"),  # year 0 in UTC
        delta("A", 1, occurred_at="2026-11-28T10:00:00+03:00:30.5"),  # PostgreSQL refuses it
        {"campaign_id": 1001, "sku": "A", "delta": 1, "x\x00y": 1},  # NUL in the reason
    ]
    # When it is stored with a valid change
    result = store(engine, [*hostile, delta("A", 5)], "task-h")
    # Then the valid change is applied and each of the others is kept with its reason
    assert (result.applied, result.rejected) == (1, len(hostile))
    assert value(engine, 1001, "A") == 5
    rows = rejected_rows(engine)
    assert [p for _, p, _, _, _ in rows] == list(range(len(hostile)))
    fields = [reason.split(":")[0] for _, _, _, _, reason in rows]
    assert fields[:5] == ["campaign_id", "sku", "event_id", "occurred_at", "occurred_at"]
    assert "x" in fields[5]
    assert "y" in fields[5]


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_messages_on_the_same_keys_end_with_the_formulas_value(
    engine: Engine,
) -> None:
    # Given many messages of counts and deltas on three keys, every change at its own instant
    rng = random.Random(20261128)
    skus = ["A", "B", "C"]
    minutes = list(range(6 * 40 * 12))
    rng.shuffle(minutes)
    instants = iter(minutes)
    messages: list[list[dict[str, Any]]] = []
    expected: dict[str, list[LoggedChange]] = {s: [] for s in skus}
    for _ in range(6 * 40):
        message = []
        for _ in range(12):
            sku, when = rng.choice(skus), BASE - timedelta(seconds=next(instants))
            if rng.random() < 0.2:
                n = rng.randint(0, 1000)
                message.append(count(sku, n, occurred_at=when.isoformat()))
                expected[sku].append(LoggedChange(0, when, count=n))
            else:
                n = rng.randint(-20, 20)
                message.append(delta(sku, n, occurred_at=when.isoformat()))
                expected[sku].append(LoggedChange(0, when, delta=n))
        messages.append(message)
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def producer(part: list[list[dict[str, Any]]]) -> None:
        try:
            barrier.wait()
            for message in part:
                store(engine, message)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    # When six threads store them at the same time
    threads = [threading.Thread(target=producer, args=(messages[i::6],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then no message failed and every key holds the formula's value over all its changes
    assert errors == []
    assert {s: v for (_, s), (v, _) in stock_rows(engine).items()} == {
        s: value_of(c) for s, c in expected.items()
    }
    assert scalar(engine, "SELECT count(*) FROM change_log") == 6 * 40 * 12


def test_a_store_creating_a_key_waits_in_key_order_and_does_not_deadlock(engine: Engine) -> None:
    # Given key B stored, key A (below it) not yet, and another transaction that takes the keys in
    # key order, as any store does: it has inserted A (uncommitted) and will lock B next
    store(engine, [delta("B", 1)])
    other = engine.connect()
    other.execute(text("INSERT INTO stock (group_id, sku) VALUES (1001, 'A')"))
    outcome: list[BaseException | StoreResult] = []

    def store_both() -> None:
        try:
            outcome.append(store(engine, [delta("A", 2), delta("B", 3)]))
        except BaseException as exc:  # reported in the main thread
            outcome.append(exc)

    # When a message for A and B is stored meanwhile, and waits for the other transaction's A
    thread = threading.Thread(target=store_both)
    thread.start()
    for _ in range(1000):
        waiting = scalar(
            engine,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        if waiting or outcome:
            break
        threading.Event().wait(0.01)
    assert waiting == 1 and not outcome
    # Then the other transaction locks B without a deadlock, and once it commits the store ends
    other.execute(text("SET LOCAL deadlock_timeout = '5s'"))  # the store would be the one to see it
    other.execute(text("SELECT 1 FROM stock WHERE group_id = 1001 AND sku = 'B' FOR UPDATE"))
    other.commit()
    other.close()
    thread.join(timeout=30)
    assert outcome == [StoreResult(applied=2, duplicates=0, rejected=0)]
    assert {s: v for (_, s), (v, _) in stock_rows(engine).items()} == {"A": 2, "B": 4}
