"""Keeping PostgreSQL small: everything `stocks.housekeeping` deletes, in one place.

Long-expired claims and the rate limiter's request ledger older than two hours go every pass, and
the per-campaign tallies of pending and held keys are folded into one row each.
The change log and rejected changes go after the retention period (`prune`).

Only change-log rows the value formula can never need again are deleted: deltas at or before the
key's current absolute count, and absolute counts strictly before it (a new count only ever wins
when it is later than the current one, and then only deltas after *it* are summed). Redelivered
duplicates of pruned rows change nothing for the same reason, so idempotency keeps holding.
Deltas of a key that never had an absolute count are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, text

BATCH_ROWS = 10_000

_PRUNE_CHANGES = text("""
    DELETE FROM change_log WHERE seq IN (
        SELECT c.seq FROM change_log c
        JOIN stock s ON s.group_id = c.group_id AND s.sku = c.sku
        WHERE c.received_at < COALESCE(CAST(:now AS timestamptz), clock_timestamp())
              - make_interval(secs => :days * 86400)
          AND s.abs_at IS NOT NULL
          AND (c.occurred_at < s.abs_at OR (c.delta IS NOT NULL AND c.occurred_at = s.abs_at))
        LIMIT :batch
    )
""")

_PRUNE_REJECTED = text("""
    DELETE FROM rejected WHERE id IN (
        SELECT id FROM rejected
        WHERE received_at < COALESCE(CAST(:now AS timestamptz), clock_timestamp())
              - make_interval(secs => :days * 86400) LIMIT :batch
    )
""")

_PRUNE_CLAIMS = text("""
    DELETE FROM push_claim WHERE lease_until < clock_timestamp() - interval '10 minutes'
""")
_PRUNE_CLAIMED_KEYS = text("""
    DELETE FROM claimed_key k
    WHERE NOT EXISTS (SELECT 1 FROM push_claim p WHERE p.claim_id = k.claim_id)
""")
_PRUNE_REQUESTS = text("""
    DELETE FROM market_request WHERE started_at < clock_timestamp() - interval '2 hours'
""")

# The tallies' delta rows folded into one row per campaign. The DELETE takes only rows committed
# before it began; rows inserted meanwhile stay and are folded next time, so the sums never move.
_FOLD_TALLIES = text("""
    WITH gone AS (DELETE FROM stock_tally RETURNING group_id, pending, held)
    INSERT INTO stock_tally (group_id, pending, held)
    SELECT group_id, sum(pending), sum(held) FROM gone
    GROUP BY group_id HAVING sum(pending) <> 0 OR sum(held) <> 0
""")

# Pruning batches of a large history may outlast the sessions' statement timeout; the task's own
# time limit bounds them.
_NO_STATEMENT_TIMEOUT = text("SELECT set_config('statement_timeout', '0', true)")

_PRUNE_REDELIVERIES = text("""
    DELETE FROM redelivery WHERE last_at < clock_timestamp() - interval '1 day'
""")


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows deleted by one pruning pass."""

    changes: int
    rejected: int


def prune(
    engine: Engine, retention_days: float, max_batches: int = 100, now: datetime | None = None
) -> Pruned:
    """Deletes what the retention allows, in short transactions of at most BATCH_ROWS rows.

    `now` (default: the database's clock) lets a simulation age its history without rewriting it.
    """
    counts = {"changes": 0, "rejected": 0}
    for name, statement in (("changes", _PRUNE_CHANGES), ("rejected", _PRUNE_REJECTED)):
        for _ in range(max_batches):
            with engine.begin() as conn:
                conn.execute(_NO_STATEMENT_TIMEOUT)
                deleted = conn.execute(
                    statement, {"days": retention_days, "batch": BATCH_ROWS, "now": now}
                ).rowcount
            counts[name] += deleted
            if deleted < BATCH_ROWS:
                break
    with engine.begin() as conn:
        conn.execute(_PRUNE_REDELIVERIES)
    return Pruned(**counts)


def prune_claims_and_requests(engine: Engine) -> None:
    """Forgets long-expired claims and request history older than two hours; folds the tallies."""
    with engine.begin() as conn:
        conn.execute(_NO_STATEMENT_TIMEOUT)
        conn.execute(_PRUNE_CLAIMS)
        conn.execute(_PRUNE_CLAIMED_KEYS)
        conn.execute(_PRUNE_REQUESTS)
    fold_tallies(engine)


def fold_tallies(engine: Engine) -> None:
    """Folds the pending/held tallies' delta rows into one row per campaign (same sums)."""
    with engine.begin() as conn:
        conn.execute(_FOLD_TALLIES)


def housekeeping(engine: Engine, retention_days: float) -> Pruned:
    """One pass of all housekeeping: claims and the request ledger, then the retention."""
    prune_claims_and_requests(engine)
    return prune(engine, retention_days)
