"""Hostile `stocks.submit` payloads through RabbitMQ and one real worker (CONTRACT.md sections 1
and 2): whatever a producer sends, the worker keeps going, applies exactly the changes the rules
accept, and stores every other change and every unreadable message with its reason.

The payloads are drawn by Hypothesis: a few hundred messages in one batch, sent in one go, then
checked against the domain's own rules (`parse_message`, `value_of`). The seed is printed; set
STOCKSYNC_FUZZ_SEED to replay a batch.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from celery import Celery
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu.utils import json as kombu_json
from sqlalchemy import Engine, text

from domain.changes import Change, UnreadableMessage, parse_message
from domain.market_rules import COUNT_MAX, DELTA_MAX_ABS
from domain.stock_value import LoggedChange, value_of
from tests.integration.broker_support import CHANGES_QUEUE, running_worker, wait_for
from tests.services import WorkerProcess
from worker.ingest import idempotency_key, raw_text

pytestmark = pytest.mark.slow

MESSAGES = 300
JSON_REASON = "(content type 'application/json')"
# Log lines of a task that failed (its message acknowledged, stored nowhere) or a worker that died.
WORKER_FAILURES = ("raised unexpected", "Unrecoverable error", "Internal error")

# Any character but lone surrogates (JSON cannot carry them as UTF-8): controls, NUL, astral.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)

# kombu's JSON decoder turns these objects into Python values, or fails on them.
KOMBU_TYPE_MARKERS: list[dict[str, Any]] = [
    {"__type__": "datetime", "__value__": "2026-11-28T10:00:00+03:00"},
    {"__type__": "datetime", "__value__": "not a date"},
    {"__type__": "bytes", "__value__": "A-100"},
    {"__type__": "decimal", "__value__": "NaN"},
    {"__type__": "uuid", "__value__": {"hex": "0" * 32}},
    {"__type__": "no-such-type", "__value__": 1},
]

EDGE_INTEGERS = [
    0, 1, -1, DELTA_MAX_ABS, DELTA_MAX_ABS + 1, -DELTA_MAX_ABS, -DELTA_MAX_ABS - 1,
    2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30, -(10**30),
]  # fmt: skip
NOT_INTEGERS: list[Any] = [True, False, 1.0, 0.5, -0.0, 1e30, "1", "0557722", " 7 ", "", None]

VALID_SKUS = ["A-100", "0557722", "557722", "sku", "SKU", "  padded  ", "a\tb", "日本-😀"]
EDGE_SKUS = [
    "x" * 255, "x" * 256, " " * 10 + "y" * 255 + "\t", "😀" * 255, "😀" * 256, "", " ", "\t\t",
    "\u3000", "A\x00B", "A\nB", "\x7f", "A\x1fB", "\x00", "12345", "'); DROP TABLE stock; --",
]  # fmt: skip
FIELDS = ["campaign_id", "sku", "delta", "count", "event_id", "occurred_at"]
EVENT_IDS = ["e1", "e2", "e3", "order-77:line-1", "", "x" * 255, "x" * 256, "\x00", "a\x00b"]
SHARED_OFFSETS = [(0, 0), (3, 0), (-5, -30), (14, 0), (-12, 0)]
BAD_INSTANTS = [
    "not a date", "", "2026-11-28T10:00:00", "2026-11-28", "2026-11-28T10:00:00+03:00:30",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-13-01T00:00:00Z",
    "2026-11-28T10:00:00+24:00", "28.11.2026 10:00",
]  # fmt: skip


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | TEXT
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
        max_leaves=6,
    )


def integer_fields() -> st.SearchStrategy[Any]:
    return (
        st.sampled_from(EDGE_INTEGERS)
        | st.integers()
        | st.sampled_from(NOT_INTEGERS)
        | json_values()
    )


def offsets() -> st.SearchStrategy[timezone]:
    """Every offset Python accepts, to the minute (±23:59)."""
    return st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )


def iso(instant: datetime, zulu: bool) -> str:
    text_form = instant.isoformat()
    return text_form.replace("+00:00", "Z") if zulu else text_form


def past_instants(now: datetime) -> st.SearchStrategy[str]:
    naive_now = now.replace(tzinfo=None) - timedelta(hours=1)
    return st.builds(
        iso,
        st.datetimes(datetime(1, 1, 2), naive_now, timezones=offsets()),
        st.booleans(),
    )


def shared_instants(now: datetime) -> st.SearchStrategy[str]:
    """Three instants a minute apart, later than any other past instant drawn here, each
    written in several offsets: changes that tie or interleave, so that "strictly later" and
    "as instants" are put to the test."""
    base = now.replace(microsecond=0) - timedelta(minutes=30)
    return st.builds(
        lambda minutes, zone, zulu: iso((base + timedelta(minutes=minutes)).astimezone(zone), zulu),
        st.integers(0, 2),
        st.sampled_from([timezone(timedelta(hours=h, minutes=m)) for h, m in SHARED_OFFSETS]),
        st.booleans(),
    )


def future_instants(now: datetime) -> st.SearchStrategy[str]:
    """At least an hour ahead: refused whatever the clock does during the test."""
    naive_now = now.replace(tzinfo=None)
    return st.builds(
        iso,
        st.datetimes(naive_now + timedelta(hours=2), datetime(9998, 1, 1), timezones=offsets()),
        st.booleans(),
    )


@st.composite
def plausible_changes(draw: st.DrawFn, now: datetime) -> dict[str, Any]:
    """A change that is mostly valid, on few keys so that values add up."""
    change: dict[str, Any] = {
        "campaign_id": draw(st.integers(1, 2)),
        "sku": draw(st.sampled_from(VALID_SKUS)),
    }
    if draw(st.booleans()):
        change["delta"] = draw(st.integers(-10, 10) | st.integers(-DELTA_MAX_ABS, DELTA_MAX_ABS))
    else:
        change["count"] = draw(st.integers(0, 100) | st.integers(0, COUNT_MAX))
    if draw(st.booleans()):
        change["event_id"] = draw(st.sampled_from(EVENT_IDS[:4]))
    # Campaign 2's changes always say when they happened, so that its counts compete by instant
    # (a change without occurred_at is later than any the test writes).
    if change["campaign_id"] == 2 or draw(st.booleans()):
        change["occurred_at"] = draw(past_instants(now) | shared_instants(now))
    return change


def hostile_changes(now: datetime) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the fields, each of any type, plus unknown fields."""
    fields = st.fixed_dictionaries(
        {},
        optional={
            "campaign_id": st.integers(1, 3) | integer_fields(),
            "sku": st.sampled_from(VALID_SKUS + EDGE_SKUS) | TEXT | json_values(),
            "delta": integer_fields(),
            "count": integer_fields(),
            "event_id": st.sampled_from(EVENT_IDS) | st.text(max_size=300) | json_values(),
            "occurred_at": (
                past_instants(now)
                | future_instants(now)
                | st.sampled_from(BAD_INSTANTS)
                | json_values()
            ),
        },
    )
    unknown = st.dictionaries(TEXT, json_values(), max_size=1)
    return st.builds(lambda known, extra: {**extra, **known}, fields, unknown)


def hostile_values(now: datetime) -> st.SearchStrategy[Any]:
    return (
        integer_fields()
        | st.sampled_from(EDGE_SKUS + EVENT_IDS + BAD_INSTANTS)
        | future_instants(now)
        | st.sampled_from(KOMBU_TYPE_MARKERS)
        | json_values()
    )


@st.composite
def one_bad_field(draw: st.DrawFn, now: datetime) -> dict[str, Any]:
    """A plausible change with one field removed, replaced by a hostile value, or added."""
    change = draw(plausible_changes(now))
    name = draw(st.sampled_from([*FIELDS, "unknown"]) | TEXT)
    if name in change and draw(st.booleans()):
        del change[name]
    else:
        change[name] = draw(hostile_values(now))
    return change


def nested(depth: int) -> Any:
    value: Any = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@dataclass(frozen=True)
class Message:
    args: list[Any]
    kwargs: dict[str, Any]
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def messages(now: datetime) -> st.SearchStrategy[Message]:
    plausible = plausible_changes(now)
    # Two in five changes plausible, two with one bad field, one anything at all.
    kinds = [plausible, plausible, one_bad_field(now), one_bad_field(now)]
    anything = st.one_of(hostile_changes(now), json_values())
    change = st.integers(0, 4).flatmap(lambda pick: kinds[pick] if pick < 4 else anything)
    changes = st.lists(change, min_size=1, max_size=12)
    readable = changes.map(lambda c: Message([], {"changes": c}))
    others = st.one_of(
        changes.map(lambda c: Message([c], {})),
        st.builds(lambda c, extra: Message([c, extra], {}), changes, json_values()),
        st.builds(
            lambda c, extra: Message([], {**extra, "changes": c}),
            changes,
            st.dictionaries(TEXT | st.just("self"), json_values(), min_size=1, max_size=2),
        ),
        json_values().map(lambda v: Message([], {"changes": v})),
        st.dictionaries(TEXT, json_values(), max_size=3).map(lambda kw: Message([], kw)),
        st.integers(50, 400).map(lambda depth: Message([], {"changes": [nested(depth)]})),
        st.integers(50, 400).map(
            lambda depth: Message(
                [], {"changes": [{"campaign_id": 1, "sku": nested(depth), "count": 1}]}
            )
        ),
    )
    # Three in four messages carry a list of changes; the rest are wrong as a whole.
    return st.integers(0, 3).flatmap(lambda pick: readable if pick else others)


def draw_batch(strategy: st.SearchStrategy[Message], count: int, seed: int) -> list[Message]:
    """`count` examples of `strategy`, generated (not shrunk) by Hypothesis from `seed`."""
    drawn: list[Message] = []

    @hypothesis.seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(strategy)
    def collect(message: Message) -> None:
        drawn.append(message)

    collect()
    return drawn


def big_messages() -> list[Message]:
    """The contract's limit (10,000 changes, one in seven invalid) and one change over it."""
    changes: list[Any] = [
        {"campaign_id": 1 + i % 3, "sku": f"BIG-{i % 100}", "delta": 1 if i % 7 else "1"}
        for i in range(10_000)
    ]
    over = [{"campaign_id": 1, "sku": "OVER", "count": 1}] * 10_001
    return [Message([], {"changes": changes}), Message([], {"changes": over})]


def wrong_arguments() -> list[Message]:
    one = [{"campaign_id": 1, "sku": "ARGS", "count": 1}]
    return [
        Message([], {}),
        Message([one], {"changes": one}),
        Message([], {"change": one}),
        Message([], {"changes": one, "self": 1}),
        Message([], {"changes": "A-100: -2"}),
        Message([], {"changes": []}),
        Message([one, one], {}),
    ]


@dataclass
class Expected:
    """What the worker must do with one message."""

    unreadable: str | None = None  # the reason, or a prefix of it when `prefix_only`
    prefix_only: bool = False
    raw: str | None = None
    accepted: list[tuple[int, Change]] = field(default_factory=list)
    rejected: set[tuple[int, str, str]] = field(default_factory=set)  # (index, reason, raw)


def expected_outcome(message: Message, now: datetime) -> Expected:
    """The domain's verdict on a message, read as the worker reads it (kombu's JSON)."""
    body = kombu_json.dumps([message.args, message.kwargs, {}])
    try:
        args, kwargs, _ = kombu_json.loads(body)
    except Exception:
        return Expected("message: the body cannot be decoded (", prefix_only=True)
    if "self" in kwargs:
        return Expected(f"message: the task's kwargs must not include 'self' {JSON_REASON}")
    try:
        parsed = parse_message(tuple(args), kwargs, now)
    except UnreadableMessage as exc:
        return Expected(str(exc), raw=raw_text({"args": args, "kwargs": kwargs}))
    return Expected(
        accepted=parsed.accepted,
        rejected={(r.index, r.reason, raw_text(r.raw)) for r in parsed.rejected},
    )


def send(rabbit_url: str, batch: list[Message]) -> None:
    producer = Celery(broker=rabbit_url)
    try:
        for message in batch:
            producer.send_task(
                "stocks.submit",
                args=message.args,
                kwargs=message.kwargs,
                queue=CHANGES_QUEUE,
                task_id=message.task_id,
            )
    finally:
        producer.close()


def handled(worker: WorkerProcess, task_ids: list[str]) -> Callable[[], bool]:
    def every_message_handled() -> bool:
        log = worker.log_text()
        return all(
            f"stocks.submit[{t}] succeeded" in log
            or f"stocks.submit[{t}] raised" in log
            or f"refused_message task={t} " in log
            for t in task_ids
        )

    return every_message_handled


@dataclass(frozen=True)
class LoggedRow:
    seq: int
    task_id: str
    group_id: int
    campaign_id: int
    sku: str
    delta: int | None
    count: int | None
    occurred_at: datetime


def read_state(
    engine: Engine,
) -> tuple[
    dict[str, LoggedRow],
    dict[str, set[tuple[int, str, str]]],
    dict[tuple[int, str], tuple[int, int]],
]:
    """The change log by idempotency key, the refusals by task id, (value, version) by key."""
    with engine.connect() as conn:
        logged = {
            key: LoggedRow(*rest)
            for key, *rest in conn.execute(
                text(
                    "SELECT idempotency_key, seq, task_id, group_id, campaign_id, sku, delta,"
                    " count, occurred_at FROM change_log"
                )
            )
        }
        refusals: dict[str, set[tuple[int, str, str]]] = defaultdict(set)
        for task_id, position, reason, raw in conn.execute(
            text("SELECT task_id, position, reason, raw FROM rejected")
        ):
            refusals[task_id].add((position, reason, raw))
        values = {
            (g, s): (v, version)
            for g, s, v, version in conn.execute(
                text("SELECT group_id, sku, value, version FROM stock")
            )
        }
    return logged, dict(refusals), values


def same_change(row: LoggedRow, change: Change, explicit_time: bool) -> bool:
    return (row.campaign_id, row.sku, row.delta, row.count) == (
        change.campaign_id,
        change.sku,
        change.delta,
        change.count,
    ) and (not explicit_time or row.occurred_at == change.occurred_at)


def test_hostile_payloads_never_stop_the_worker_and_each_change_is_applied_or_stored(
    database_url: str, rabbit_url: str, engine: Engine, tmp_path: Path
) -> None:
    seed = int(os.environ.get("STOCKSYNC_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"hostile input seed: {seed} (STOCKSYNC_FUZZ_SEED={seed} replays it)")
    now = datetime.now(UTC)
    # Given a few hundred generated messages, the limits, and wrong arguments
    batch = draw_batch(messages(now), MESSAGES, seed) + big_messages() + wrong_arguments()
    marker = Message([], {"changes": [{"campaign_id": 9, "sku": "MARKER", "count": 1}]})
    with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as worker:
        # When they are sent to one worker, then one more ordinary message
        send(rabbit_url, [*batch, marker])
        # Then the worker is still alive and answers the last message, having handled all
        wait_for("the last message", handled(worker, [marker.task_id]), timeout=60)
        wait_for("every message", handled(worker, [m.task_id for m in batch]), timeout=30)
        assert worker.process is not None and worker.process.poll() is None
        log = worker.log_text()
    failures = [line for line in log.splitlines() if any(f in line for f in WORKER_FAILURES)]
    assert not failures, f"{failures[:3]} (seed {seed})"
    check_outcome(engine, [*batch, marker], now, seed)


def check_outcome(engine: Engine, batch: list[Message], now: datetime, seed: int) -> None:
    logged, refusals, values = read_state(engine)
    sent = {m.task_id for m in batch}
    accepted_by_key: dict[str, list[tuple[str, Change, bool]]] = defaultdict(list)
    # What the contract calls a change's identity: its event_id, else its message and position
    identities: set[object] = set()
    for message in batch:
        expected = expected_outcome(message, now)
        where = f"{message.task_id} {message.args!r:.200} {message.kwargs!r:.200} (seed {seed})"
        stored = refusals.get(message.task_id, set())
        if expected.unreadable is not None:
            # An unreadable message: stored once, whole, with its reason; nothing applied
            assert len(stored) == 1, where
            ((position, reason, raw),) = stored
            assert position == -1, where
            if expected.prefix_only:
                assert reason.startswith(expected.unreadable), where
                assert reason.endswith(JSON_REASON), where
            else:
                assert reason == expected.unreadable, where
            if expected.raw is not None:
                assert raw == expected.raw, where
            continue
        # Every refused change is stored with its position, reason and raw content
        assert stored == expected.rejected, where
        for index, change in expected.accepted:
            raw_change = (message.kwargs.get("changes") or message.args[0])[index]
            event = change.event_id
            identities.add(event if event is not None else (message.task_id, index))
            key = idempotency_key(change, message.task_id, index)
            accepted_by_key[key].append(
                (message.task_id, change, raw_change.get("occurred_at") is not None)
            )
    # Every accepted change is in the change log (its event id once, whichever came first)...
    assert set(logged) == set(accepted_by_key), f"seed {seed}"
    assert len(logged) == len(identities), f"seed {seed}"
    for key, row in logged.items():
        assert row.task_id in sent
        candidates = [(c, t) for task, c, t in accepted_by_key[key] if task == row.task_id]
        assert any(same_change(row, c, t) for c, t in candidates), f"{key} {row} (seed {seed})"
    # ... and no refusal belongs to a message that was not sent
    assert set(refusals) <= sent, f"seed {seed}"
    # And each key's value is the contract's formula over its accepted changes
    by_stock_key: dict[tuple[int, str], list[LoggedChange]] = defaultdict(list)
    for row in logged.values():
        by_stock_key[(row.group_id, row.sku)].append(
            LoggedChange(row.seq, row.occurred_at, row.delta, row.count)
        )
    assert {k: values[k][0] for k in by_stock_key} == {
        k: value_of(v) for k, v in by_stock_key.items()
    }, f"seed {seed}"
    # (A key whose only changes were duplicates of other keys' event ids gets an outbox row that
    # is never pending: version 0.)
    unchanged = {k: v for k, v in values.items() if k not in by_stock_key}
    assert all(v == (0, 0) for v in unchanged.values()), f"{unchanged} (seed {seed})"


def test_a_change_at_an_offset_postgresql_cannot_store_is_not_lost(
    database_url: str, rabbit_url: str, engine: Engine, tmp_path: Path
) -> None:
    """ISO 8601 and Python read offsets up to ±23:59; PostgreSQL stores ±15:59 at most."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).astimezone(timezone(timedelta(hours=16)))
    changes = [
        {"campaign_id": 1, "sku": "FINE", "count": 5},
        {"campaign_id": 1, "sku": "FAR", "count": 7, "occurred_at": yesterday.isoformat()},
    ]
    message = Message([], {"changes": changes})
    with running_worker(database_url, rabbit_url, tmp_path / "worker.log") as worker:
        send(rabbit_url, [message])
        wait_for("the message", handled(worker, [message.task_id]))
    _, refusals, values = read_state(engine)
    assert values.get((1, "FINE")) == (5, 1)
    applied = values.get((1, "FAR")) == (7, 1)
    refused = [(p, r) for p, r, _ in refusals.get(message.task_id, set())]
    assert applied != (len(refused) == 1), (values, refused)
