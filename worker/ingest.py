"""Ingest into PostgreSQL: accepted changes into the change log and the outbox, rejected aside.

One message is one transaction. Keys are locked in key order before the change log is
written, so concurrent messages for a key apply one after the other and each sees the other's
committed deltas (the value formula needs them when a new absolute count arrives). Every lock a
store takes or waits for, a key it inserts included, comes in that one order, so two stores
cannot deadlock on their keys.
"""

from __future__ import annotations

import json
import reprlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, text

from domain.changes import Change, Rejection
from domain.stock_value import KeyState, LoggedChange, apply_changes, new_winning_absolute
from worker import counters
from worker.database import iso_instants

Key = tuple[int, str]

# One pass in key order: each key is inserted, or its row locked (`DO UPDATE ... WHERE false`
# locks the conflicting row without updating it, PostgreSQL's INSERT page), waiting where another
# transaction holds it or has inserted it uncommitted. Two passes (insert the missing keys, then
# lock them) would wait out of order, and so could deadlock.
_ENSURE_AND_LOCK_KEYS = text("""
    INSERT INTO stock AS st (group_id, sku)
    SELECT g, s FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[])) AS k(g, s)
    ORDER BY g, s
    ON CONFLICT (group_id, sku) DO UPDATE SET sku = st.sku WHERE false
""")

_LOCK_KEYS = text("""
    SELECT group_id, sku, abs_count, abs_at, abs_seq, delta_sum, last_occurred_at
    FROM stock
    WHERE (group_id, sku) IN (
        SELECT g, s FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[])) AS k(g, s))
    ORDER BY group_id, sku
    FOR UPDATE
""")

_LOG_CHANGES = text("""
    INSERT INTO change_log
        (idempotency_key, group_id, campaign_id, sku, delta, count, occurred_at, task_id)
    SELECT key, g, c, s, d, n, t, :task_id
    FROM unnest(CAST(:keys AS text[]), CAST(:groups AS bigint[]), CAST(:campaigns AS bigint[]),
                CAST(:skus AS text[]), CAST(:deltas AS bigint[]), CAST(:counts AS bigint[]),
                CAST(:times AS timestamptz[])) AS n(key, g, c, s, d, n, t)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING seq, group_id, sku, delta, count, occurred_at
""")

_DELTAS_AFTER = text("""
    SELECT k.g, k.s, COALESCE(SUM(c.delta), 0)
    FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[]), CAST(:after AS timestamptz[]))
         AS k(g, s, after)
    LEFT JOIN change_log c
      ON c.group_id = k.g AND c.sku = k.s AND c.delta IS NOT NULL AND c.occurred_at > k.after
    GROUP BY k.g, k.s
""")

# A key becomes pending (version + 1) when its value changes, and on its very first change, so
# that a first count of 0 is sent too: the Market asks for 0 rather than nothing.
_UPDATE_KEYS = text("""
    UPDATE stock AS st SET
        abs_count = n.abs_count,
        abs_at = n.abs_at,
        abs_seq = n.abs_seq,
        delta_sum = n.delta_sum,
        last_occurred_at = n.last_at,
        version = st.version + CASE
            WHEN st.version = 0 OR COALESCE(n.abs_count, 0) + n.delta_sum <> st.value THEN 1
            ELSE 0 END,
        changed_at = CASE
            WHEN st.version = 0 OR COALESCE(n.abs_count, 0) + n.delta_sum <> st.value THEN now()
            ELSE st.changed_at END
    FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[]), CAST(:abs_counts AS bigint[]),
                CAST(:abs_ats AS timestamptz[]), CAST(:abs_seqs AS bigint[]),
                CAST(:delta_sums AS bigint[]), CAST(:last_ats AS timestamptz[]))
         AS n(g, s, abs_count, abs_at, abs_seq, delta_sum, last_at)
    WHERE st.group_id = n.g AND st.sku = n.s
""")

_REJECT = text("""
    INSERT INTO rejected (task_id, position, campaign_id, raw, reason)
    SELECT :task_id, p, c, r, why
    FROM unnest(CAST(:positions AS int[]), CAST(:campaigns AS bigint[]), CAST(:raws AS text[]),
                CAST(:reasons AS text[])) AS x(p, c, r, why)
    ON CONFLICT (task_id, position) DO NOTHING
    RETURNING position, campaign_id
""")

_COUNT_REDELIVERY = text("""
    INSERT INTO redelivery (task_id, deliveries) VALUES (:task_id, 2)
    ON CONFLICT (task_id) DO UPDATE
        SET deliveries = redelivery.deliveries + 1, last_at = now()
    RETURNING deliveries
""")

# A delivery that ended in a transient error (sent back on purpose) is not a death: it takes
# back the count its redelivery will add. Its own short timeouts, so that it passes where the
# message's statements did not (a 1 ms statement_timeout, a held lock).
_FORGIVE_REDELIVERY = text("""
    INSERT INTO redelivery (task_id, deliveries) VALUES (:task_id, 0)
    ON CONFLICT (task_id) DO UPDATE
        SET deliveries = redelivery.deliveries - 1, last_at = now()
""")

# The first delivery stamps the message's arrival, on the database's clock, in a transaction of
# its own; a redelivery reads the same stamp. The row doubles as the delivery count (1 so far).
_FIRST_SEEN = text("""
    WITH stamped AS (
        INSERT INTO redelivery (task_id, deliveries) VALUES (:task_id, 1)
        ON CONFLICT (task_id) DO NOTHING
        RETURNING first_seen_at
    )
    SELECT first_seen_at FROM stamped
    UNION ALL
    SELECT first_seen_at FROM redelivery WHERE task_id = :task_id
    LIMIT 1
""")

UNREADABLE_POSITION = -1


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What one message did: changes newly applied, duplicates ignored, changes rejected."""

    applied: int
    duplicates: int
    rejected: int


def idempotency_key(change: Change, task_id: str, index: int) -> str:
    """The change's identity: its event_id, else its message's task id and its position."""
    if change.event_id is None:
        return f"t:{task_id}:{index}"
    if "\x00" in change.event_id:  # PostgreSQL text cannot hold NUL; JSON escaping is injective
        return "j:" + json.dumps(change.event_id)
    return "e:" + change.event_id


# What is kept of rejected and unreadable raw content: each string to its first 64 KiB (as the
# unreadable-message consumer keeps of a body), the whole JSON text to its first 512 KiB.
RAW_KEPT_CHARS = 64 * 1024
RAW_TEXT_MAX_CHARS = 512 * 1024


def raw_text(raw: Any) -> str:
    """Raw content as JSON text (escaped, so any string, NUL included, is stored faithfully);
    with a string longer than 64 KiB or a text longer than 512 KiB, `{"raw": the text, cut,
    "raw_chars": its uncut length, "raw_truncated": true}` instead."""
    removed = [0]
    try:
        # Long strings are cut before dumping: a 50 MB field is not copied once more.
        text = json.dumps(_cut_strings(raw, removed), sort_keys=False, default=repr)
    except (ValueError, TypeError, RecursionError):
        # Nested deeper than the interpreter recurses (~1,000 levels): a bounded summary.
        text = _SHALLOW_REPR.repr(raw)
    if len(text) <= RAW_TEXT_MAX_CHARS and not removed[0]:
        return text
    return json.dumps(
        {
            "raw": text[:RAW_TEXT_MAX_CHARS],
            "raw_chars": len(text) + removed[0],
            "raw_truncated": True,
        }
    )


def _cut_strings(value: Any, removed: list[int]) -> Any:
    """`value` with every string longer than RAW_KEPT_CHARS cut to it; `removed[0]` counts the
    characters cut off (unescaped)."""
    if isinstance(value, str):
        if len(value) <= RAW_KEPT_CHARS:
            return value
        removed[0] += len(value) - RAW_KEPT_CHARS
        return value[:RAW_KEPT_CHARS]
    if isinstance(value, dict):
        return {k: _cut_strings(v, removed) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, removed) for v in value]
    return value


_SHALLOW_REPR = reprlib.Repr()
_SHALLOW_REPR.maxlevel = 20
_SHALLOW_REPR.maxstring = _SHALLOW_REPR.maxother = 1_000
_SHALLOW_REPR.maxlist = _SHALLOW_REPR.maxdict = 100


def campaign_of(raw: Any) -> int | None:
    """The campaign a raw change names, when it names a valid one (for listing rejected changes)."""
    if isinstance(raw, dict):
        value = raw.get("campaign_id")
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**63:
            return value
    return None


def _store_rejections(
    conn: Connection,
    task_id: str,
    rejections: Sequence[Rejection],
    group_of: Callable[[int], int] = lambda c: c,
) -> None:
    """Keeps the rejections; counts those newly stored (a redelivery counts nothing twice)."""
    if not rejections:
        return
    stored = conn.execute(
        _REJECT,
        {
            "task_id": task_id,
            "positions": [r.index for r in rejections],
            "campaigns": [campaign_of(r.raw) for r in rejections],
            "raws": [raw_text(r.raw) for r in rejections],
            "reasons": [r.reason for r in rejections],
        },
    ).all()
    counters.add(
        conn,
        (
            ((counters.UNREADABLE_MESSAGES, counters.NO_CAMPAIGN, ""), 1)
            if position == UNREADABLE_POSITION
            else (
                (
                    counters.REJECTED_CHANGES,
                    counters.NO_CAMPAIGN if campaign is None else group_of(campaign),
                    "",
                ),
                1,
            )
            for position, campaign in stored
        ),
    )


def store_unreadable(engine: Engine, task_id: str, raw: Any, reason: str) -> None:
    """Keeps a message that cannot be read at all, with its raw content and the reason."""
    with engine.begin() as conn:
        _store_rejections(conn, task_id, [Rejection(UNREADABLE_POSITION, raw, reason)])


def _lock_keys(conn: Connection, keys: Sequence[Key]) -> dict[Key, KeyState] | None:
    """Locks the keys' outbox rows in key order and reads their states: one statement when they
    all exist, the common case. Missing keys above every key locked so far are created and
    locked next, in key order still. None when a missing key lies below a key already locked:
    the transaction must then end (rolled back) before `_create_and_lock_keys`."""
    states = _lock(conn, keys)
    missing = [k for k in keys if k not in states]  # in key order, as `keys`
    if not missing:
        return states
    if any(key > missing[0] for key in states):
        return None
    states.update(_create_and_lock_keys(conn, missing))
    return states


def _create_and_lock_keys(conn: Connection, keys: Sequence[Key]) -> dict[Key, KeyState]:
    """Creates the missing keys and locks all, in one pass in key order, then reads their states
    (a statement of its own, so that it sees what the transactions waited for committed)."""
    conn.execute(_ENSURE_AND_LOCK_KEYS, _key_params(keys))
    return _lock(conn, keys)


def _key_params(keys: Sequence[Key]) -> dict[str, list[Any]]:
    return {"groups": [k[0] for k in keys], "skus": [k[1] for k in keys]}


def _lock(conn: Connection, keys: Sequence[Key]) -> dict[Key, KeyState]:
    return {
        (g, s): KeyState(abs_count, abs_at, abs_seq, delta_sum, last_at)
        for g, s, abs_count, abs_at, abs_seq, delta_sum, last_at in conn.execute(
            _LOCK_KEYS, _key_params(keys)
        )
    }


def count_redelivery(engine: Engine, task_id: str) -> int:
    """Records one more delivery of a redelivered message; returns how many there have been."""
    with engine.begin() as conn:
        return int(conn.execute(_COUNT_REDELIVERY, {"task_id": task_id}).scalar_one())


def first_seen(engine: Engine, task_id: str) -> datetime:
    """When the service first received this message (database clock), stamped on first call."""
    with engine.begin() as conn:
        stamp: datetime = conn.execute(_FIRST_SEEN, {"task_id": task_id}).scalar_one()
        return stamp


def forgive_redelivery(engine: Engine, task_id: str) -> None:
    """Records that this delivery ends alive (sent back after a transient error): its
    redelivery is not counted as a death."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL statement_timeout = '5s'")
        conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
        conn.execute(_FORGIVE_REDELIVERY, {"task_id": task_id})


def _apply(conn: Connection, states: dict[Key, KeyState], logged: Sequence[Any]) -> None:
    """Moves the locked keys' states forward by the newly logged changes, set-based."""
    new_by_key: dict[Key, list[LoggedChange]] = defaultdict(list)
    for seq, group_id, sku, delta, count, occurred_at in logged:
        new_by_key[(group_id, sku)].append(LoggedChange(seq, occurred_at, delta, count))
    keys = sorted(new_by_key)
    winners = {
        key: winner
        for key in keys
        if (winner := new_winning_absolute(states[key], new_by_key[key])) is not None
    }
    deltas_after: dict[Key, int] = {}
    if winners:
        rows = conn.execute(
            _DELTAS_AFTER,
            {
                "groups": [k[0] for k in winners],
                "skus": [k[1] for k in winners],
                "after": iso_instants(w.occurred_at for w in winners.values()),
            },
        )
        deltas_after = {(g, s): int(total) for g, s, total in rows}
    updated = {
        key: apply_changes(states[key], new_by_key[key], deltas_after.get(key)) for key in keys
    }
    conn.execute(
        _UPDATE_KEYS,
        {
            "groups": [k[0] for k in keys],
            "skus": [k[1] for k in keys],
            "abs_counts": [updated[k].abs_count for k in keys],
            "abs_ats": iso_instants(updated[k].abs_at for k in keys),
            "abs_seqs": [updated[k].abs_seq for k in keys],
            "delta_sums": [updated[k].delta_sum for k in keys],
            "last_ats": iso_instants(updated[k].last_occurred_at for k in keys),
        },
    )


def store_message(
    engine: Engine,
    task_id: str,
    accepted: Sequence[tuple[int, Change]],
    rejected: Sequence[Rejection],
    group_of: Callable[[int], int],
) -> StoreResult:
    """Commits one message: its new changes applied exactly once, its rejected changes kept."""
    logged: list[Any] = []
    with engine.connect() as conn:  # begins on first use; closed uncommitted, rolled back
        if accepted:
            groups = [group_of(c.campaign_id) for _, c in accepted]
            skus = [c.sku for _, c in accepted]
            keys = sorted(set(zip(groups, skus, strict=True)))
            # Lock before logging: a concurrent message for the same key waits here, then sees
            # that message's committed rows in the statements below.
            states = _lock_keys(conn, keys)
            if states is None:
                # A new key below a key just locked: the locks are dropped (nothing else was
                # done yet), then all keys are taken again in key order.
                conn.rollback()
                states = _create_and_lock_keys(conn, keys)
            logged = list(
                conn.execute(
                    _LOG_CHANGES,
                    {
                        "task_id": task_id,
                        "keys": [idempotency_key(c, task_id, i) for i, c in accepted],
                        "groups": groups,
                        "campaigns": [c.campaign_id for _, c in accepted],
                        "skus": skus,
                        "deltas": [c.delta for _, c in accepted],
                        "counts": [c.count for _, c in accepted],
                        "times": iso_instants(c.occurred_at for _, c in accepted),
                    },
                ).all()
            )
            if logged:
                _apply(conn, states, logged)
        # Last: the counter rows are locked for as short a time as the transaction allows.
        _store_rejections(conn, task_id, rejected, group_of)
        conn.commit()
    return StoreResult(
        applied=len(logged), duplicates=len(accepted) - len(logged), rejected=len(rejected)
    )
