"""The stored routing of campaigns to group keys, brought in line with the configured warehouse
groups at worker start: keys are carried over (domain/routing.py) in one transaction.

Moved and copied keys are marked pending, so the first send after a change is the key's current
value at its group's sending campaign. Every transfer is logged (`keys_moved`, `keys_copied`).

The v3 destinations (STOCKSYNC_V3_CAMPAIGNS) are stored too: a campaign moved between v2 and v3,
or to another v3 business or warehouse, keeps its keys (they are (campaign, sku) either way): those
acknowledged, held or claimed for the old route are made pending at a new version (those already
pending and unclaimed are left as they are), so the new route's first send is each key's current
value, and its claims are forgotten so nothing claimed for the old route is sent there
(`keys_rerouted`: the keys given a new version).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from domain.routing import Carry, KeyTransfer, differ, plan, routes_of
from worker.database import is_transient
from worker.logs import log_event
from worker.settings import Settings

log = logging.getLogger("stocksync.routes")

# Any constant shared by all stocksync processes: workers starting together route one at a time.
ROUTE_LOCK_ID = 0x5370C6

_LOCK = text("SELECT pg_advisory_xact_lock(:id)")
_STORED = text("""
    SELECT campaign_id, group_id FROM campaign_route WHERE v3_business_id IS NULL
    ORDER BY campaign_id
""")
_STORED_V3 = text("""
    SELECT campaign_id, v3_business_id, v3_warehouse_id FROM campaign_route
    WHERE v3_business_id IS NOT NULL
""")
_STORE_V3 = text("""
    INSERT INTO campaign_route (campaign_id, group_id, v3_business_id, v3_warehouse_id)
    SELECT c, c, b, w FROM unnest(CAST(:campaigns AS bigint[]), CAST(:businesses AS bigint[]),
                                  CAST(:warehouses AS bigint[])) AS v(c, b, w)
""")
# A rerouted campaign's keys that the new route would not send as they are get a new version: an
# acknowledged one (the old route holds its value), a held one (refused by the old route's rules:
# the new route tries it) and a claimed one (a push of the old route may still be answered: its
# 200 then acknowledges the version it carried, no longer the key's). A pending key no claim
# holds is left alone: the new route's first send is its current value anyway, and 300,000 of
# them (a backlog moved into v3) cost no writes.
_REROUTE_KEYS = text("""
    UPDATE stock s SET version = s.version + 1, changed_at = now()
    WHERE s.group_id = :source
      AND (s.version = s.acked_version
           OR s.parked_version >= s.version
           OR EXISTS (SELECT 1 FROM claimed_key k WHERE k.group_id = s.group_id AND k.sku = s.sku))
""")
_FORGET = text("DELETE FROM campaign_route")
_STORE = text("""
    INSERT INTO campaign_route (campaign_id, group_id)
    SELECT * FROM unnest(CAST(:campaigns AS bigint[]), CAST(:groups AS bigint[]))
""")

# The change log follows the moved keys (the value formula sums a key's deltas by group); the
# changes of a SKU the target already holds stay where they are, with the key that is dropped.
_MOVE_CHANGES = text("""
    UPDATE change_log c SET group_id = :target
    WHERE c.group_id = :source
      AND NOT EXISTS (SELECT 1 FROM stock t WHERE t.group_id = :target AND t.sku = c.sku)
""")
_DROP_CONTESTED = text("""
    DELETE FROM stock s WHERE s.group_id = :source
      AND EXISTS (SELECT 1 FROM stock t WHERE t.group_id = :target AND t.sku = s.sku)
""")
_MOVE_KEYS = text("""
    UPDATE stock SET group_id = :target, version = version + 1, changed_at = now()
    WHERE group_id = :source
""")
_COPY_KEYS = text("""
    INSERT INTO stock (group_id, sku, abs_count, abs_at, abs_seq, delta_sum, last_occurred_at,
                       version, changed_at)
    SELECT :target, sku, abs_count, abs_at, abs_seq, delta_sum, last_occurred_at, 1, now()
    FROM stock WHERE group_id = :source
    ON CONFLICT (group_id, sku) DO NOTHING
""")
_FORGET_CLAIMS = text("DELETE FROM claimed_key WHERE group_id = :source")


def _stored(conn: Connection) -> dict[int, int]:
    return {int(c): int(g) for c, g in conn.execute(_STORED)}


def _carry(conn: Connection, transfer: KeyTransfer) -> None:
    params = {"source": transfer.source, "target": transfer.target}
    if transfer.carry is Carry.COPY:
        copied = conn.execute(_COPY_KEYS, params).rowcount
        log_event(log, logging.WARNING, "keys_copied", keys=copied, **params)
        return
    conn.execute(_MOVE_CHANGES, params)
    dropped = conn.execute(_DROP_CONTESTED, params).rowcount
    moved = conn.execute(_MOVE_KEYS, params).rowcount
    conn.execute(_FORGET_CLAIMS, params)
    log_event(log, logging.WARNING, "keys_moved", keys=moved, dropped=dropped, **params)


V3Routes = Mapping[int, tuple[int, int]]  # campaign -> (business, partner warehouse)


def _stored_v3(conn: Connection) -> dict[int, tuple[int, int]]:
    return {int(c): (int(b), int(w)) for c, b, w in conn.execute(_STORED_V3)}


def rerouted(stored: V3Routes, configured: V3Routes) -> list[int]:
    """Campaigns whose v3 destination changed: into or out of v3, or to another business or
    warehouse."""
    return sorted(c for c in set(stored) | set(configured) if stored.get(c) != configured.get(c))


def _reroute(conn: Connection, campaign: int) -> None:
    params = {"source": campaign}
    keys = conn.execute(_REROUTE_KEYS, params).rowcount
    conn.execute(_FORGET_CLAIMS, params)
    log_event(log, logging.WARNING, "keys_rerouted", campaign=campaign, keys=keys)


def apply_routes(
    engine: Engine, groups: list[list[int]], v3: V3Routes | None = None
) -> list[KeyTransfer]:
    """Stores the routing of `groups` and the `v3` destinations, carrying the keys over from the
    stored ones when they differ; returns the group transfers made. Nothing is written when the
    routing is unchanged."""
    configured = routes_of(groups)
    configured_v3 = dict(v3 or {})
    with engine.connect() as conn:  # the common case: unchanged, read only
        if not differ(_stored(conn), configured) and not rerouted(_stored_v3(conn), configured_v3):
            return []
    with engine.begin() as conn:
        conn.execute(_LOCK, {"id": ROUTE_LOCK_ID})
        stored = _stored(conn)
        for campaign in rerouted(_stored_v3(conn), configured_v3):
            _reroute(conn, campaign)
        transfers = plan(stored, configured) if differ(stored, configured) else []
        for transfer in transfers:
            _carry(conn, transfer)
        conn.execute(_FORGET)
        if configured:
            conn.execute(
                _STORE, {"campaigns": list(configured), "groups": list(configured.values())}
            )
        if configured_v3:
            conn.execute(
                _STORE_V3,
                {
                    "campaigns": list(configured_v3),
                    "businesses": [b for b, _ in configured_v3.values()],
                    "warehouses": [w for _, w in configured_v3.values()],
                },
            )
    log_event(log, logging.INFO, "routes_stored", campaigns=len(configured), moved=len(transfers))
    return transfers


def route_at_start(engine: Engine, settings: Settings) -> bool:
    """`apply_routes` for a starting worker; False when PostgreSQL is unreachable now (or fails
    with another error that may pass: `is_transient`), and then each process's first task
    applies it (`worker.runtime.routed`) before it touches a key."""
    v3 = {c: (t.business_id, t.warehouse_id) for c, t in settings.v3_campaigns.items()}
    try:
        apply_routes(engine, settings.warehouse_groups, v3)
    except DBAPIError as exc:
        if not is_transient(exc):
            raise
        log_event(log, logging.WARNING, "routes_deferred", reason="database unavailable")
        return False
    return True
