"""Pruning keeps the value formula and idempotency exact while the change log stays small."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from domain.changes import Change
from worker.housekeeping import housekeeping, prune
from worker.ingest import store_message

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _store(engine: Engine, task: str, *changes: dict) -> None:
    accepted = [
        (i, Change(7, c["sku"], c.get("delta"), c.get("count"), c["event_id"], c["at"]))
        for i, c in enumerate(changes)
    ]
    store_message(engine, task, accepted, [], lambda c: c)


def _value(engine: Engine, sku: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT value FROM stock WHERE sku = :s"), {"s": sku}).scalar_one()
        )


def _events(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {k for (k,) in conn.execute(text("SELECT idempotency_key FROM change_log"))}


def test_pruning_deletes_only_what_the_formula_can_never_need(engine: Engine) -> None:
    # Given a key with a count, deltas around it, and a key with deltas only, all a month old
    h = timedelta(hours=1)
    _store(
        engine,
        "m1",
        {"sku": "A", "count": 10, "event_id": "old-count", "at": T0},
        {"sku": "A", "delta": -1, "event_id": "before", "at": T0 - h},
        {"sku": "A", "delta": -2, "event_id": "same-instant", "at": T0},
        {"sku": "A", "delta": -3, "event_id": "after", "at": T0 + h},
        {"sku": "A", "count": 50, "event_id": "older-count", "at": T0 - 2 * h},
        {"sku": "B", "delta": 4, "event_id": "no-count", "at": T0},
    )
    with engine.begin() as conn:
        conn.execute(text("UPDATE change_log SET received_at = now() - interval '30 days'"))
    assert _value(engine, "A") == 7
    # When the history is pruned at a 7-day retention
    pruned = prune(engine, 7)
    # Then the deltas at or before the count and the older count are gone, the rest stays
    assert pruned.changes == 3
    assert _events(engine) == {"e:old-count", "e:after", "e:no-count"}
    # And redelivered duplicates of pruned rows change nothing
    _store(
        engine,
        "m2",
        {"sku": "A", "delta": -1, "event_id": "before", "at": T0 - h},
        {"sku": "A", "delta": -2, "event_id": "same-instant", "at": T0},
        {"sku": "A", "count": 50, "event_id": "older-count", "at": T0 - 2 * h},
    )
    assert _value(engine, "A") == 7
    # And a newer count still sums exactly the deltas after it
    _store(engine, "m3", {"sku": "A", "count": 20, "event_id": "new-count", "at": T0 + h / 2})
    assert _value(engine, "A") == 17
    assert _value(engine, "B") == 4


def test_recent_history_is_kept(engine: Engine) -> None:
    _store(
        engine,
        "m1",
        {"sku": "A", "count": 10, "event_id": "c", "at": T0},
        {"sku": "A", "delta": -1, "event_id": "d", "at": T0 - timedelta(hours=1)},
    )
    assert prune(engine, 7).changes == 0
    assert _events(engine) == {"e:c", "e:d"}


def test_a_fractional_retention_in_days_is_honoured(engine: Engine) -> None:
    _store(
        engine,
        "m1",
        {"sku": "A", "count": 10, "event_id": "c", "at": T0},
        {"sku": "A", "delta": -1, "event_id": "d", "at": T0 - timedelta(hours=1)},
    )
    with engine.begin() as conn:
        conn.execute(text("UPDATE change_log SET received_at = now() - interval '7 hours'"))
    assert prune(engine, 0.5).changes == 0  # 12 hours: kept
    assert prune(engine, 0.25).changes == 1  # 6 hours: the delta before the count goes


def test_housekeeping_forgets_expired_claims_and_old_requests_and_keeps_live_ones(
    engine: Engine,
) -> None:
    # Given a claim whose lease ran out an hour ago, a live claim, and requests 3 h and 1 min old
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO push_claim (claim_id, campaign_id, skus, lease_until) VALUES
                ('dead', 7, 1, now() - interval '1 hour'), ('live', 7, 1, now() + interval '1 min')
        """)
        )
        conn.execute(
            text("""
            INSERT INTO claimed_key (group_id, sku, claim_id)
            VALUES (7, 'A', 'dead'), (7, 'B', 'live')
        """)
        )
        conn.execute(
            text("""
            INSERT INTO market_request (campaign_id, skus, started_at, finished_at, status) VALUES
                (7, 1, now() - interval '3 hours', now() - interval '3 hours', 200),
                (7, 2, now() - interval '1 minute', now() - interval '1 minute', 200)
        """)
        )
    # When one housekeeping pass runs
    pruned = housekeeping(engine, retention_days=7)
    # Then only the expired claim, its key and the old request are gone
    with engine.connect() as conn:
        claims = {c for (c,) in conn.execute(text("SELECT claim_id FROM push_claim"))}
        keys = {k for (k,) in conn.execute(text("SELECT sku FROM claimed_key"))}
        requests = [s for (s,) in conn.execute(text("SELECT skus FROM market_request"))]
    assert (claims, keys, requests) == ({"live"}, {"B"}, [2])
    assert (pruned.changes, pruned.rejected) == (0, 0)
