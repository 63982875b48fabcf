"""Operator commands' side of the database: listing what was rejected, resyncs, snapshot imports.

Every statement is set-based. Statements that bump keys lock them in key order (as the ingest
does), so they cannot deadlock with a concurrent `stocks.submit` on the same keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from sqlalchemy import Engine, text

from domain.changes import Rejection
from domain.snapshot import SnapshotLine, split_lines
from worker.ingest import UNREADABLE_POSITION, store_message
from worker.verify import KEEPS_DRIFTING

RESYNC_CHUNK_KEYS = 10_000
IMPORT_CHUNK_LINES = 1_000
REJECTIONS_KEPT = 10

# Rejected changes, unreadable messages and held SKUs, newest first, in one statement. Each arm
# is cut to the limit on its own (by the `received_at` index for `rejected`) before they are
# merged. A held SKU's time is when its value was set: the moment it was held is not recorded.
# A SKU counts as held while its held (`parked_version`) version is still its current one (a
# newer value, or a resync, makes it eligible to be sent again).
_LIST_REJECTED = text("""
    (SELECT r.received_at AS at,
            CASE WHEN r.position = :unreadable THEN 'unreadable' ELSE 'rejected' END AS kind,
            r.campaign_id, r.task_id, r.position, CAST(NULL AS text) AS sku, r.reason, r.raw
     FROM rejected AS r
     WHERE r.received_at >= COALESCE(CAST(:since AS timestamptz), '-infinity')
       AND (CAST(:campaigns AS bigint[]) IS NULL
            OR r.campaign_id = ANY(CAST(:campaigns AS bigint[])))
     ORDER BY r.received_at DESC, r.task_id, r.position
     LIMIT :n)
    UNION ALL
    (SELECT s.changed_at, 'parked', s.group_id, NULL, NULL, s.sku, s.parked_reason, NULL
     FROM stock AS s
     WHERE s.parked_reason IS NOT NULL AND s.parked_version >= s.version
       AND s.changed_at >= COALESCE(CAST(:since AS timestamptz), '-infinity')
       AND (CAST(:group AS bigint) IS NULL OR s.group_id = CAST(:group AS bigint))
     ORDER BY s.changed_at DESC, s.sku
     LIMIT :n)
    ORDER BY at DESC, kind, task_id, position, sku
    LIMIT :n
""")

# The next chunk of a group's keys after `after` (in key order), locked, then bumped: the value
# is unchanged but the key is pending again (version > acked_version), and a parked SKU becomes
# eligible (parked_version < version).
_RESYNC_NEXT_KEYS = text("""
    WITH picked AS (
        SELECT group_id, sku FROM stock
        WHERE group_id = :g AND (CAST(:after AS text) IS NULL OR sku > CAST(:after AS text))
        ORDER BY sku
        LIMIT :n
        FOR UPDATE
    ),
    bumped AS (
        UPDATE stock AS s SET version = s.version + 1, changed_at = now()
        FROM picked WHERE s.group_id = picked.group_id AND s.sku = picked.sku
        RETURNING s.sku
    )
    SELECT count(*) AS keys, max(sku) AS last_sku FROM bumped
""")

_RESYNC_LISTED_KEYS = text("""
    WITH picked AS (
        SELECT group_id, sku FROM stock
        WHERE group_id = :g AND sku = ANY(CAST(:skus AS text[]))
        ORDER BY sku
        FOR UPDATE
    )
    UPDATE stock AS s SET version = s.version + 1, changed_at = now()
    FROM picked WHERE s.group_id = picked.group_id AND s.sku = picked.sku
    RETURNING s.sku
""")


# After a resync, keys with unresolved drift (they keep drifting, or were repaired lately) are
# sent with updatedAt = now, never older than the Market's own; their drift is resolved, so the
# sweep repairs them again by itself.
_RESOLVE_DRIFT = text("""
    WITH open_drift AS (
        SELECT DISTINCT sku FROM drift
        WHERE group_id = :g AND resolved_at IS NULL
          AND (CAST(:skus AS text[]) IS NULL OR sku = ANY(CAST(:skus AS text[])))
    ),
    picked AS (
        SELECT s.ctid AS row_id FROM stock s
        WHERE s.group_id = :g AND s.sku IN (SELECT sku FROM open_drift)
        ORDER BY s.sku
        FOR UPDATE
    ),
    fresh AS (
        UPDATE stock s SET last_occurred_at = GREATEST(s.last_occurred_at, now())
        FROM picked WHERE s.ctid = picked.row_id
    )
    UPDATE drift SET resolved_at = now()
    WHERE group_id = :g AND resolved_at IS NULL
      AND (CAST(:skus AS text[]) IS NULL OR sku = ANY(CAST(:skus AS text[])))
""")

_DRIFTING_SKUS = text(f"""
    SELECT DISTINCT sku FROM drift WHERE group_id = :g AND {KEEPS_DRIFTING} ORDER BY sku
""")  # noqa: S608 - built from a constant fragment; every value is a bound parameter


@dataclass(frozen=True, slots=True)
class RejectedEntry:
    """One line of `stocksync rejected`: a rejected change, an unreadable message or a held SKU."""

    # `campaign_id` is a rejected change's own campaign, a held SKU's group; `task_id`/`position`
    # locate a change or message, `sku` a held SKU; `raw` is the stored JSON text.

    kind: str
    at: datetime
    campaign_id: int | None
    task_id: str | None
    position: int | None
    sku: str | None
    reason: str
    raw: str | None


def list_rejected(
    engine: Engine,
    *,
    campaigns: Sequence[int] | None,
    group_id: int | None,
    since: datetime | None,
    limit: int,
) -> list[RejectedEntry]:
    """The newest `limit` rejected changes, unreadable messages and held SKUs (of `campaigns`/
    `group_id` when given)."""
    params = {
        "unreadable": UNREADABLE_POSITION,
        "since": since,
        "campaigns": list(campaigns) if campaigns is not None else None,
        "group": group_id,
        "n": limit,
    }
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        rows = conn.execute(_LIST_REJECTED, params).all()
    return [
        RejectedEntry(
            kind=row.kind,
            at=row.at,
            campaign_id=row.campaign_id,
            task_id=row.task_id,
            position=row.position,
            sku=row.sku,
            reason=row.reason,
            raw=row.raw,
        )
        for row in rows
    ]


def resync_group(engine: Engine, group_id: int, chunk_keys: int = RESYNC_CHUNK_KEYS) -> int:
    """Bumps every key of the group, a chunk per transaction; returns how many keys."""
    total = 0
    after: str | None = None
    while True:
        with engine.begin() as conn:
            keys, last_sku = conn.execute(
                _RESYNC_NEXT_KEYS, {"g": group_id, "after": after, "n": chunk_keys}
            ).one()
        total += int(keys)
        if keys < chunk_keys:
            with engine.begin() as conn:
                conn.execute(_RESOLVE_DRIFT, {"g": group_id, "skus": None})
            return total
        after = last_sku


def resync_skus(engine: Engine, group_id: int, skus: Sequence[str]) -> list[str]:
    """Bumps the group's listed keys that exist, in one transaction; returns the SKUs bumped."""
    with engine.begin() as conn:
        bumped = [
            sku for (sku,) in conn.execute(_RESYNC_LISTED_KEYS, {"g": group_id, "skus": skus})
        ]
        conn.execute(_RESOLVE_DRIFT, {"g": group_id, "skus": list(skus)})
        return bumped


def drifting_skus(engine: Engine, group_id: int) -> list[str]:
    """The group's keys that keep drifting (left alone by the sweep until a resync)."""
    with engine.connect() as conn:
        return [sku for (sku,) in conn.execute(_DRIFTING_SKUS, {"g": group_id})]


@dataclass(slots=True)
class ImportReport:
    """What an import did: lines newly applied, already applied, rejected (the first few kept)."""

    lines: int = 0
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    first_rejections: list[Rejection] = field(default_factory=list)


def _chunks(lines: Iterable[SnapshotLine], size: int) -> Iterator[list[SnapshotLine]]:
    iterator = iter(lines)
    while chunk := list(islice(iterator, size)):
        yield chunk


def import_snapshot(
    engine: Engine,
    lines: Iterable[SnapshotLine],
    *,
    campaign_id: int,
    import_identity: str,
    occurred_at: str,
    group_of: Callable[[int], int],
    on_chunk: Callable[[ImportReport, int], None] = lambda report, offset: None,
    chunk_lines: int = IMPORT_CHUNK_LINES,
) -> ImportReport:
    """Stores the lines as changes, a transaction per chunk; on_chunk(report, offset) after each."""
    # Each chunk is a message of its own to `store_message`, with the import id as its task id:
    # lines applied before are duplicates, rejected lines already kept are not kept twice.
    report = ImportReport()
    for chunk in _chunks(lines, chunk_lines):
        accepted, rejected = split_lines(
            chunk, campaign_id, import_identity, occurred_at, datetime.now(UTC)
        )
        result = store_message(engine, import_identity, accepted, rejected, group_of)
        report.lines += len(chunk)
        report.applied += result.applied
        report.duplicates += result.duplicates
        report.rejected += result.rejected
        room = REJECTIONS_KEPT - len(report.first_rejections)
        report.first_rejections.extend(rejected[: max(room, 0)])
        on_chunk(report, chunk[-1].offset)
    return report
