"""Claims on pending keys: claiming them in batches, renewing, reading, acknowledging, holding.

A claim is a `push_claim` row with a lease plus one `claimed_key` row per key. The primary key of
`claimed_key` lets one claim hold a key at a time, so overlapping drains never take the same key;
a key whose claim's lease ran out (its worker died) is taken over by the next claim. The
outbox rows are not written to claim them, and planners of one campaign take turns on its row
(`worker.campaign_health.lock`; a busy campaign is skipped until the next drain). A SKU the
Market rejected with a 400 is *held* at its version (columns `parked_version`, `parked_reason`)
until a newer change arrives.

A claim belongs to a route (`domain.route`): a v2 route's claim holds keys of its one group; a v3
route's claim (a business) holds keys of all the business's campaigns, taken round-robin across
them, oldest first within each, so a full request of 2,000 items is fair to every warehouse.
`campaign_id` in the signatures below is the route key (minus the business id for v3).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, Row, text

from domain.batching import pack, pack_v3, take_turns
from domain.market_payload import PendingStock, updated_at_to_send
from domain.market_rules import SKUS_PER_REQUEST_MAX
from domain.route import Method, Route, Routing
from worker import campaign_health, counters
from worker.database import iso_instants
from worker.rate_limiter import RateLimiter

# The campaigns with work, least recently drained first: every campaign with a pending key (a skip
# scan of the pending index) and every campaign whose oldest acknowledgement is due for its
# refresh (a skip scan of the refresh index, reading one entry per campaign: its oldest `acked_at`),
# and every parked campaign whose probe is due (it may have nothing pending). A v3 campaign's work
# is its business's route (minus the business id, `domain.route`), drained in that route's turn.
# Its cost grows with the number of campaigns by one index probe each; no idle campaign is claimed
# for.
_CAMPAIGNS_WITH_WORK = text("""
    WITH RECURSIVE pending AS (
        (SELECT group_id FROM stock WHERE version > acked_version ORDER BY group_id LIMIT 1)
        UNION ALL
        SELECT (SELECT s.group_id FROM stock s
                WHERE s.version > s.acked_version AND s.group_id > p.group_id
                ORDER BY s.group_id LIMIT 1)
        FROM pending p WHERE p.group_id IS NOT NULL
    ),
    acked AS (
        (SELECT group_id, acked_at FROM stock WHERE version = acked_version
         ORDER BY group_id, acked_at LIMIT 1)
        UNION ALL
        SELECT n.group_id, n.acked_at FROM acked a,
            LATERAL (SELECT s.group_id, s.acked_at FROM stock s
                     WHERE s.version = s.acked_version AND s.group_id > a.group_id
                     ORDER BY s.group_id, s.acked_at LIMIT 1) n
    ),
    work AS (
        SELECT group_id FROM pending WHERE group_id IS NOT NULL
        UNION
        SELECT group_id FROM acked
        WHERE acked_at < clock_timestamp() - make_interval(secs => :refresh_after)
        UNION
        SELECT campaign_id FROM campaign
        WHERE parked_reason IS NOT NULL AND probe_at <= clock_timestamp()
    ),
    routed AS (
        SELECT DISTINCT COALESCE(m.route_key, w.group_id) AS route_key FROM work w
        LEFT JOIN unnest(CAST(:v3_campaigns AS bigint[]), CAST(:v3_routes AS bigint[]))
                  AS m(campaign_id, route_key) ON m.campaign_id = w.group_id
    )
    SELECT r.route_key FROM routed r LEFT JOIN campaign c ON c.campaign_id = r.route_key
    ORDER BY c.drained_at NULLS FIRST, r.route_key
""")

# Routes with a live claim, and the largest of their live claims (SKUs or items): `push_claim` holds
# only the claims of pushes queued or under way.
_HELD = text("""
    SELECT campaign_id, max(skus) FROM push_claim
    WHERE lease_until > clock_timestamp() GROUP BY campaign_id
""")

_DRAINED = text("UPDATE campaign SET drained_at = clock_timestamp() WHERE campaign_id = :c")

_OUTSTANDING = text("""
    SELECT count(*), COALESCE(sum(skus), 0) FROM push_claim
    WHERE campaign_id = :c AND lease_until > clock_timestamp()
""")

# Claims the keys `picked` selects: a key held by a live claim is skipped, one whose lease ran out
# is taken over. Returns the keys actually taken (unordered: a sort here would be planned under
# `enable_sort = off` at a disabled node's cost, 10^10, and that cost makes PostgreSQL JIT-compile
# the statement; the caller orders the few rows).
_TAKE = """
    taken AS (
        INSERT INTO claimed_key (group_id, sku, claim_id)
        SELECT group_id, sku, :claim FROM picked
        ON CONFLICT (group_id, sku) DO UPDATE SET claim_id = EXCLUDED.claim_id
            WHERE NOT EXISTS (SELECT 1 FROM push_claim p
                              WHERE p.claim_id = claimed_key.claim_id
                                AND p.lease_until > clock_timestamp())
        RETURNING group_id, sku
    )
    SELECT picked.* FROM picked JOIN taken USING (group_id, sku)
"""

# A key held by a live claim (the fragment also serves the read-back sweep, worker/verify.py).
NOT_CLAIMED = """
    NOT EXISTS (SELECT 1 FROM claimed_key k
                WHERE k.group_id = s.group_id AND k.sku = s.sku
                  AND EXISTS (SELECT 1 FROM push_claim p
                              WHERE p.claim_id = k.claim_id
                                AND p.lease_until > clock_timestamp()))
"""

# Pending keys, oldest change first; a SKU held at its current version waits for a change.
_CLAIM = text(f"""
    WITH picked AS (
        SELECT s.group_id, s.sku, s.changed_at FROM stock s
        WHERE s.group_id = :c AND s.version > s.acked_version
          AND (s.parked_version IS NULL OR s.parked_version < s.version)
          AND {NOT_CLAIMED}
        ORDER BY s.changed_at
        LIMIT :n
    ),
    {_TAKE}
""")  # noqa: S608 - built from the constant fragments above; every value is a bound parameter

# Keys acknowledged longer ago than the refresh age, oldest first: the Market wants stock at least
# once a day and refuses an updatedAt older than a day. A SKU held (refused on a refresh) waits for
# a change like a pending one: sent again, it would only be refused again, for ever. `now()`, not
# `clock_timestamp()`: a stable bound is an index condition, a volatile one a filter over every
# acknowledged key of the campaign (measured at 200,000 keys: 116 ms instead of 0.06 ms).
_CLAIM_REFRESH = text(f"""
    WITH picked AS (
        SELECT s.group_id, s.sku, s.changed_at FROM stock s
        WHERE s.group_id = :c AND s.version = s.acked_version
          AND s.acked_at < now() - make_interval(secs => :refresh_after)
          AND (s.parked_version IS NULL OR s.parked_version < s.version)
          AND {NOT_CLAIMED}
        ORDER BY s.acked_at
        LIMIT :n
    ),
    {_TAKE}
""")  # noqa: S608 - built from the constant fragments above; every value is a bound parameter

# The claims must walk the pending index in order and stop after a batch. Right after a bulk load,
# before autovacuum has analyzed `stock`, the planner otherwise picks a bitmap scan of every
# pending row and a sort (measured: seconds per claim at 5 M rows instead of milliseconds). No
# claim statement may contain a node these switches disable: its cost would pass `jit_above_cost`
# (tests/integration/test_drain_cost.py checks the plans).
_ORDERED_SCANS_ONLY = text("""
    SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)
""")

# The candidates of one v3 request: at most :n keys of each campaign of the business, oldest first
# (`turn_key`: the change, or for a refresh the acknowledgement), each campaign's index walked and
# left after :n rows. The round-robin across campaigns is `domain.batching.take_turns`: a window
# function here reads every key tied on the order (all of them after a move into v3: measured, the
# whole backlog of each campaign per claim), and a sort is planned at the disabled node's cost.
_V3_PENDING = f"""
    SELECT s.group_id, s.sku, s.changed_at AS turn_key FROM stock s
    WHERE s.group_id = w.id AND s.version > s.acked_version
      AND (s.parked_version IS NULL OR s.parked_version < s.version)
      AND {NOT_CLAIMED}
    ORDER BY s.changed_at
    LIMIT :n
"""  # noqa: S608 - constant fragments only
_V3_REFRESH = f"""
    SELECT s.group_id, s.sku, s.acked_at AS turn_key FROM stock s
    WHERE s.group_id = w.id AND s.version = s.acked_version
      AND s.acked_at < now() - make_interval(secs => :refresh_after)
      AND (s.parked_version IS NULL OR s.parked_version < s.version)
      AND {NOT_CLAIMED}
    ORDER BY s.acked_at
    LIMIT :n
"""  # noqa: S608 - constant fragments only


def _v3_candidates(per_campaign: str) -> str:
    return f"""
    SELECT x.group_id, x.sku, x.turn_key
    FROM unnest(CAST(:campaigns AS bigint[])) AS w(id)
    CROSS JOIN LATERAL ({per_campaign}) AS x
    """  # noqa: S608 - constant fragments only


_V3_CANDIDATES = text(_v3_candidates(_V3_PENDING))
_V3_REFRESH_CANDIDATES = text(_v3_candidates(_V3_REFRESH))
# Claims the keys chosen from the candidates (in the planner's transaction, on the business's row).
_CLAIM_V3 = text(f"""
    WITH picked AS (
        SELECT * FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[])) AS p(group_id, sku)
    ),
    {_TAKE}
""")  # noqa: S608 - built from the constant fragments above; every value is a bound parameter

_MOVE_TO_CLAIM = text("""
    UPDATE claimed_key k SET claim_id = :new
    FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[])) AS m(group_id, sku)
    WHERE k.claim_id = :old AND k.group_id = m.group_id AND k.sku = m.sku
""")

_NEW_CLAIM = text("""
    INSERT INTO push_claim (claim_id, campaign_id, skus, lease_until)
    VALUES (:claim, :c, :n, clock_timestamp() + make_interval(secs => :lease))
""")

_RENEW = text("""
    UPDATE push_claim SET lease_until = clock_timestamp() + make_interval(secs => :lease)
    WHERE claim_id = :claim AND lease_until > clock_timestamp()
    RETURNING campaign_id, clock_timestamp() AS now
""")

_READ = text("""
    SELECT s.group_id, s.sku, s.value, s.version, s.last_occurred_at, s.sent_updated_at
    FROM claimed_key k
    JOIN stock s ON s.group_id = k.group_id AND s.sku = k.sku
    WHERE k.claim_id = :claim
    ORDER BY s.changed_at
""")

# A 200 acknowledges the version that was sent (the Market has that version, whoever holds the
# key's claim now); a change committed meanwhile keeps the key pending. Rows are locked in key
# order, the order the ingest locks them in, so the two never deadlock. The updatedAt sent is
# recorded when the ack applies (a refresh's too) and never lowered: the next send starts from it.
_ACK = text("""
    WITH sent AS (
        SELECT * FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[]),
                             CAST(:versions AS bigint[]), CAST(:vals AS bigint[]),
                             CAST(:updated_ats AS timestamptz[]))
                 AS n(group_id, sku, version, value, updated_at)
    ),
    locked AS (
        SELECT s.ctid AS row_id, s.group_id, s.sku FROM stock s
        WHERE (s.group_id, s.sku) IN (SELECT group_id, sku FROM sent)
        ORDER BY s.group_id, s.sku
        FOR UPDATE
    )
    UPDATE stock s SET
        acked_value = CASE WHEN sent.version > s.acked_version THEN sent.value
                           ELSE s.acked_value END,
        sent_updated_at = CASE WHEN sent.version >= s.acked_version
                               THEN GREATEST(s.sent_updated_at, sent.updated_at)
                               ELSE s.sent_updated_at END,
        acked_version = GREATEST(s.acked_version, sent.version),
        acked_at = clock_timestamp(),
        parked_version = NULL,
        parked_reason = NULL
    FROM locked JOIN sent ON sent.group_id = locked.group_id AND sent.sku = locked.sku
    WHERE s.ctid = locked.row_id
""")

_HOLD_SKUS = text("""
    UPDATE stock s SET parked_version = n.version, parked_reason = n.reason
    FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[]), CAST(:versions AS bigint[]),
                CAST(:reasons AS text[])) AS n(group_id, sku, version, reason)
    WHERE s.group_id = n.group_id AND s.sku = n.sku
""")

# Keys sent by a push whose lease ran out in flight: pending again (as `resync` does), rows locked
# in key order like the ingest's.
_SEND_AGAIN = text("""
    WITH locked AS (
        SELECT s.ctid AS row_id FROM stock s
        WHERE (s.group_id, s.sku) IN (
            SELECT * FROM unnest(CAST(:groups AS bigint[]), CAST(:skus AS text[])))
        ORDER BY s.group_id, s.sku
        FOR UPDATE
    )
    UPDATE stock s SET version = s.version + 1, changed_at = now()
    FROM locked WHERE s.ctid = locked.row_id
""")

_RELEASE = text("DELETE FROM claimed_key WHERE claim_id = :claim")
_DROP_CLAIM = text("DELETE FROM push_claim WHERE claim_id = :claim")


@dataclass(frozen=True, slots=True)
class Claim:
    """A batch claimed for one push task (`campaign_id`: its route key)."""

    claim_id: str
    campaign_id: int
    skus: int


class Claims:
    """Claims, acknowledgements and held SKUs on the `stock` table, for one route at a time."""

    def __init__(
        self,
        engine: Engine,
        limiter: RateLimiter,
        lease_seconds: float,
        refresh_after_seconds: float,
        routing: Routing | None = None,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.lease_seconds = lease_seconds
        self.refresh_after_seconds = refresh_after_seconds
        self.routing = routing or Routing({})

    def campaigns_to_drain(self) -> list[int]:
        """Route keys with work (pending keys, a refresh due, a parked route's probe due), least
        recently drained first; a route no longer configured (a campaign moved to v3, a business
        left) is left out. A v3 campaign's work is its business's (minus the business id)."""
        v3 = sorted(self.routing.v3.items())
        with self.engine.connect() as conn:
            rows = conn.execute(
                _CAMPAIGNS_WITH_WORK,
                {
                    "refresh_after": self.refresh_after_seconds,
                    "v3_campaigns": [campaign for campaign, _ in v3],
                    "v3_routes": [-destination.business_id for _, destination in v3],
                },
            )
            routes = [Route.of_key(row[0]) for row in rows]
        return [r.key for r in routes if self.routing.is_current(r)]

    def held(self) -> dict[int, int]:
        """Route keys with a live claim (a push queued or under way): the largest such claim."""
        with self.engine.connect() as conn:
            return {int(route): int(skus) for route, skus in conn.execute(_HELD)}

    def claim(
        self, campaign_id: int, probe_interval: float, max_batches: int | None = None
    ) -> list[Claim]:
        """Claims the next batches (at most `max_batches`) of a campaign, within its rate budget
        and parallel slots.

        A parked campaign gets one single-SKU probe when its probe is due (a pending key, else an
        acknowledged one: a campaign parked on a refresh has none pending); a blocked one nothing.
        A v3 route (a business) is claimed by `_claim_v3`.
        """
        route = Route.of_key(campaign_id)
        if not self.routing.is_current(route):
            return []
        if route.method is Method.V3:
            return self._claim_v3(route, probe_interval, max_batches)
        return self._claim_v2(campaign_id, probe_interval, max_batches)

    def _claim_v2(
        self, campaign_id: int, probe_interval: float, max_batches: int | None
    ) -> list[Claim]:
        """The plan of a v2 campaign: SKUs within its per-minute budget and parallel slots."""
        with self.engine.begin() as conn:
            conn.execute(_ORDERED_SCANS_ONLY)
            # Locks the campaign: one planner at once. A busy one is skipped, not waited for: its
            # holder may be frozen or cut off, and the other campaigns must go on.
            use = self.limiter.try_usage(conn, campaign_id)
            if use is None:
                return []
            # Its turn: the next drain pass serves the campaigns waiting longer first.
            conn.execute(_DRAINED, {"c": campaign_id})
            if use.blocked_until is not None and use.blocked_until > use.now:
                return []
            if use.parked_reason is not None:
                if not campaign_health.probe_due(conn, campaign_id, probe_interval):
                    return []
                probe = self._claim_batches(conn, campaign_id, 1, 1)[0]
                return (
                    probe
                    or self._claim_batches(
                        conn, campaign_id, 1, 1, refresh=True, refresh_after=0.0
                    )[0]
                )
            claims, claimed_skus = conn.execute(_OUTSTANDING, {"c": campaign_id}).one()
            budget = self.limiter.limit - use.used_in_window - int(claimed_skus)
            # One batch more than may be in flight, so a finished request is followed at once.
            slots = self.limiter.max_parallel + 1 - int(claims)
            if max_batches is not None:
                slots = min(slots, max_batches)
            fresh, exhausted = self._claim_batches(conn, campaign_id, budget, slots)
            budget -= sum(c.skus for c in fresh)
            if not exhausted or budget <= 0 or slots <= len(fresh):
                return fresh
            # Refreshes only take what fresh changes left, one batch a pass, spread over time.
            return fresh + self._claim_batches(conn, campaign_id, budget, 1, refresh=True)[0]

    def _claim_batches(
        self,
        conn: Connection,
        campaign_id: int,
        budget: int,
        slots: int,
        *,
        refresh: bool = False,
        refresh_after: float | None = None,
    ) -> tuple[list[Claim], bool]:
        """Claims up to `slots` batches within `budget` SKUs (`refresh`: acknowledged keys older
        than `refresh_after`, by default the refresh age); True when no key was left to claim."""
        claims: list[Claim] = []
        statement = _CLAIM_REFRESH if refresh else _CLAIM
        while slots > 0 and budget > 0:
            claim_id = uuid.uuid4().hex
            wanted = min(SKUS_PER_REQUEST_MAX, budget)
            params = {"c": campaign_id, "n": wanted, "claim": claim_id}
            if refresh:
                params["refresh_after"] = (
                    self.refresh_after_seconds if refresh_after is None else refresh_after
                )
            rows = conn.execute(statement, params).all()
            if not rows:
                return claims, True
            by_sku = {r.sku: r for r in rows}
            ordered = [r.sku for r in sorted(rows, key=lambda r: r.changed_at)]
            batches = [[by_sku[sku] for sku in batch] for batch in pack(ordered)]
            claims.extend(self._split(conn, campaign_id, claim_id, batches))
            budget -= len(rows)
            slots -= len(batches)
            if len(rows) < wanted:
                return claims, True
        return claims, False

    def _split(
        self, conn: Connection, route_key: int, claim_id: str, batches: Sequence[Sequence[Row]]
    ) -> list[Claim]:
        """One claim per request: the body limit can make several of one claimed selection, the
        first keeping `claim_id`, each further one moving its keys to a claim of its own."""
        ids = [claim_id] + [uuid.uuid4().hex for _ in batches[1:]]
        for extra_id, extra in zip(ids[1:], batches[1:], strict=True):
            conn.execute(
                _MOVE_TO_CLAIM,
                {
                    "new": extra_id,
                    "old": claim_id,
                    "groups": [r.group_id for r in extra],
                    "skus": [r.sku for r in extra],
                },
            )
        claims = []
        for batch_id, batch in zip(ids, batches, strict=True):
            conn.execute(
                _NEW_CLAIM,
                {"claim": batch_id, "c": route_key, "n": len(batch), "lease": self.lease_seconds},
            )
            claims.append(Claim(batch_id, route_key, len(batch)))
        return claims

    def _claim_v3(
        self, route: Route, probe_interval: float, max_batches: int | None = None
    ) -> list[Claim]:
        """The v3 plan of a business: requests within its requests-per-minute budget and parallel
        slots, each as full as the pending items of all its campaigns allow (2,000 or 512 KB)."""
        campaigns = self.routing.campaigns_of(route.target)
        with self.engine.begin() as conn:
            conn.execute(_ORDERED_SCANS_ONLY)
            # Locks the business: one planner at once; a busy one is skipped, as in `claim`.
            use = self.limiter.try_usage(conn, route.key)
            if use is None:
                return []
            conn.execute(_DRAINED, {"c": route.key})
            if use.blocked_until is not None and use.blocked_until > use.now:
                return []
            if use.parked_reason is not None:
                if not campaign_health.probe_due(conn, route.key, probe_interval):
                    return []
                probe = self._claim_v3_batches(conn, route.key, campaigns, 1, 1, size=1)[0]
                return (
                    probe
                    or self._claim_v3_batches(
                        conn, route.key, campaigns, 1, 1, size=1, refresh=True, refresh_after=0.0
                    )[0]
                )
            claims, _ = conn.execute(_OUTSTANDING, {"c": route.key}).one()
            # The budget counts requests: the window's and the claims not yet sent.
            budget = self.limiter.limit_of(route.key) - use.used_in_window - int(claims)
            slots = min(self.limiter.max_parallel + 1 - int(claims), budget)
            if max_batches is not None:
                slots = min(slots, max_batches)
            fresh, exhausted = self._claim_v3_batches(conn, route.key, campaigns, slots, budget)
            if not exhausted or slots <= len(fresh):
                return fresh
            refresh = self._claim_v3_batches(
                conn, route.key, campaigns, 1, budget - len(fresh), refresh=True
            )[0]
            return fresh + refresh

    def _claim_v3_batches(
        self,
        conn: Connection,
        route_key: int,
        campaigns: list[int],
        slots: int,
        budget: int,
        *,
        size: int = SKUS_PER_REQUEST_MAX,
        refresh: bool = False,
        refresh_after: float | None = None,
    ) -> tuple[list[Claim], bool]:
        """Up to `slots` requests (at most `budget`) of up to `size` items each; True when no
        item was left to claim."""
        claims: list[Claim] = []
        statement = _V3_REFRESH_CANDIDATES if refresh else _V3_CANDIDATES
        while min(slots, budget) > 0:
            claim_id = uuid.uuid4().hex
            params: dict[str, object] = {"campaigns": campaigns, "n": size}
            if refresh:
                params["refresh_after"] = (
                    self.refresh_after_seconds if refresh_after is None else refresh_after
                )
            chosen = take_turns(
                [(r.group_id, r.turn_key, r) for r in conn.execute(statement, params)], size
            )
            taken = {
                (r.group_id, r.sku)
                for r in conn.execute(
                    _CLAIM_V3,
                    {
                        "groups": [r.group_id for r in chosen],
                        "skus": [r.sku for r in chosen],
                        "claim": claim_id,
                    },
                )
            }
            rows = [r for r in chosen if (r.group_id, r.sku) in taken]
            if not rows:
                return claims, True
            items = [(r.sku, self.routing.warehouse_of(r.group_id)) for r in rows]
            batches = [[rows[i] for i in batch] for batch in pack_v3(items)]
            claims.extend(self._split(conn, route_key, claim_id, batches))
            slots -= len(batches)
            budget -= len(batches)
            if len(rows) < size:
                return claims, True
        return claims, False

    def renew(self, claim_id: str, at_least: float = 0.0) -> bool:
        """Extends a live claim's lease (to at least `at_least` seconds from now); False when it
        ran out (its keys may be claimed again)."""
        lease = max(self.lease_seconds, at_least)
        with self.engine.begin() as conn:
            row = conn.execute(_RENEW, {"claim": claim_id, "lease": lease}).first()
            return row is not None

    def renew_for_sending(self, claim_id: str, at_least: float) -> datetime | None:
        """`renew` right before a PUT: the database's clock then (the one clock every worker
        shares, for `updatedAt`), or None when the lease ran out."""
        lease = max(self.lease_seconds, at_least)
        with self.engine.begin() as conn:
            row = conn.execute(_RENEW, {"claim": claim_id, "lease": lease}).first()
            return None if row is None else row.now

    def read(self, campaign_id: int, claim_id: str) -> list[PendingStock]:
        """The claimed keys as they are now: the values and versions to send."""
        with self.engine.connect() as conn:
            return [
                PendingStock(
                    r.sku,
                    r.value,
                    r.version,
                    r.last_occurred_at,
                    sent_updated_at=r.sent_updated_at,
                    group_id=r.group_id,
                )
                for r in conn.execute(_READ, {"claim": claim_id})
            ]

    def acknowledge(
        self,
        campaign_id: int,
        claim_id: str,
        sent: Sequence[PendingStock],
        sent_at: datetime | None = None,
    ) -> None:
        """Records a 200 for the versions sent (and, given the moment the body was built at,
        each key's updatedAt sent); the campaign works again."""
        updated_ats = [None if sent_at is None else updated_at_to_send(s, sent_at) for s in sent]
        with self.engine.begin() as conn:
            conn.execute(
                _ACK,
                {
                    "groups": [s.group_id for s in sent],
                    "skus": [s.sku for s in sent],
                    "versions": [s.version for s in sent],
                    "vals": [s.value for s in sent],
                    "updated_ats": iso_instants(updated_ats),
                },
            )
            campaign_health.works_again(conn, campaign_id)
            # Counted by the keys' campaigns: a v3 request holds several.
            pushed = Counter(s.group_id for s in sent)
            increments = [((counters.SKUS_PUSHED, group, ""), n) for group, n in pushed.items()]
            counters.add(conn, increments)

    def hold_skus(
        self, campaign_id: int, claim_id: str, rejected: Sequence[tuple[PendingStock, str]]
    ) -> None:
        """SKUs the Market rejected (400): held at this version, with the Market's reason."""
        with self.engine.begin() as conn:
            conn.execute(
                _HOLD_SKUS,
                {
                    "groups": [s.group_id for s, _ in rejected],
                    "skus": [s.sku for s, _ in rejected],
                    "versions": [s.version for s, _ in rejected],
                    "reasons": [reason for _, reason in rejected],
                },
            )

    def send_again(self, campaign_id: int, claim_id: str, sent: Sequence[PendingStock]) -> None:
        """Keys whose request outlived the claim's lease: pending again, the claim given up."""
        with self.engine.begin() as conn:
            conn.execute(
                _SEND_AGAIN,
                {"groups": [s.group_id for s in sent], "skus": [s.sku for s in sent]},
            )
            conn.execute(_RELEASE, {"c": campaign_id, "claim": claim_id})
            conn.execute(_DROP_CLAIM, {"claim": claim_id})

    def release(self, campaign_id: int, claim_id: str) -> None:
        """Gives the claim's remaining keys back to the drain; they stay pending."""
        with self.engine.begin() as conn:
            conn.execute(_RELEASE, {"c": campaign_id, "claim": claim_id})
            conn.execute(_DROP_CLAIM, {"claim": claim_id})
