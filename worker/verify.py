"""The verify sweep: read acknowledged keys back from the Market, record and repair what drifted.

A pass over one campaign picks its acknowledged, not pending, not claimed keys oldest check first
(the `stock_verify` index: the cost is per key read, never per table), reads them in batches of
500 through the one rate limiter (kind "read": its own window, sending first), and records every
batch in one statement that checks again that each key is still acknowledged at the value
compared, not claimed, and acknowledged before the read started. A drifted key is made pending
again (version + 1, sent with updatedAt = now); a key with 3 unresolved drifts in 24 hours is
recorded but left alone ("keeps drifting") until `stocksync resync`.

The beat's passes are paced: a *round* reads every key of the campaign once, spread over 90 % of
STOCKSYNC_VERIFY_HOURS; when a round has read every key, `last_full_sweep_at` is set and the next
round starts. `stocksync verify` reads every key now (`sweep_now`).

Reading is behind `StockReader`, chosen per campaign by `readers(campaign_id)`: `V2Reader` reads
`POST /v2/campaigns/{id}/offers/stocks`; `V3Reader` reads a v3 campaign (STOCKSYNC_V3_CAMPAIGNS)
with `POST /v3/businesses/{id}/offers/stocks` of its partner warehouse; both return the same
`ReadOutcome` (offers by SKU), so drift and repair are one. The limiter is asked on the key's
route (`domain.route`): the campaign for v2, the business for v3 (its reads count requests).
A parked route (401/403/404 on a push, recorded on the route's row) is not read: the pass and
`sweep_now` stop with "campaign parked". A read answered 401/403/404 stops the pass (the reason
logged as `verify_read_failed`) without parking: parking is the pushes' and their probes'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection, Engine, text

from domain.route import Method, Routing
from domain.stock_read import (
    KEEPS_DRIFTING_AFTER,
    READ_OFFER_IDS_MAX,
    AnswerError,
    DriftKind,
    KeyCheck,
    MarketStock,
    UnknownWarehouse,
    check_keys,
    own_warehouse,
    parse_v3_offers,
    parse_warehouses,
    sweep_allowance,
)
from worker import campaign_health, counters
from worker.claims import NOT_CLAIMED
from worker.logs import log_event
from worker.market_client import MarketAnswer, MarketClient, MarketReader, MarketReadError
from worker.rate_limiter import PARKED, READ, Permit, RateLimiter

log = logging.getLogger("stocksync.verify")

# `stocksync verify` waits this long for sending to finish (its own repairs go first too) before
# it gives up on a campaign: sending needs a running worker.
SENDING_PATIENCE_SECONDS = 120.0
# A campaign's warehouse not found by discovery is looked for again after this long.
WAREHOUSE_RETRY_SECONDS = 3600.0
# Why a pass or `stocksync verify` did not read a campaign whose route is parked (401/403/404).
STOPPED_PARKED = "campaign parked"
# Passes of one campaign take turns on this advisory lock (second key: the campaign id).
_LOCK_SPACE = 0x5EF1

_BEAT_PASS = 0  # the beat's whole pass (campaign ids are positive, v3 route keys negative)
_TRY_LOCK = text("SELECT pg_try_advisory_lock(:space, CAST(:c % 2147483647 AS integer))")
_UNLOCK = text("SELECT pg_advisory_unlock(:space, CAST(:c % 2147483647 AS integer))")

# The next keys to read: acknowledged, not pending, not claimed, checked before `before`, oldest
# check first. The ordered walk of `stock_verify` stops after :n rows.
_PICK = text(f"""
    SELECT s.sku, s.acked_value, clock_timestamp() AS picked_at FROM stock s
    WHERE s.group_id = :c AND s.version = s.acked_version AND s.acked_at IS NOT NULL
      AND s.verified_at < :before AND {NOT_CLAIMED}
    ORDER BY s.verified_at
    LIMIT :n
""")  # noqa: S608 - built from the constant fragment above; every value is a bound parameter

_ORDERED_SCANS_ONLY = text("""
    SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)
""")

# One batch's outcome in one statement. Rows are locked in key order (as the ingest and the
# acknowledgement lock them). A key counts as drifted only when it is, at this moment, still
# acknowledged (version = acked_version) at the value compared, acknowledged before the read
# started, and not claimed: a change or push since the read is never taken for drift.
_RECORD = text(f"""
    WITH seen AS (
        SELECT * FROM unnest(CAST(:skus AS text[]), CAST(:kinds AS text[]),
                             CAST(:counts AS bigint[]), CAST(:updated AS timestamptz[]),
                             CAST(:ours AS bigint[]))
            AS n(sku, kind, market_count, market_updated_at, our_value)
    ),
    locked AS (
        SELECT s.ctid AS row_id, s.sku, s.version, s.acked_version, s.acked_value, s.acked_at,
               {NOT_CLAIMED} AS free
        FROM stock s
        WHERE s.group_id = :c AND s.sku IN (SELECT sku FROM seen)
        ORDER BY s.sku
        FOR UPDATE
    ),
    judged AS (
        SELECT l.row_id, l.sku, seen.kind, seen.market_count, seen.market_updated_at,
               l.acked_value,
               (seen.kind IS NOT NULL AND l.version = l.acked_version
                AND l.acked_value = seen.our_value AND l.acked_at < :read_started
                AND l.free) AS drifted,
               (SELECT count(*) FROM drift d
                WHERE d.group_id = :c AND d.sku = l.sku AND d.resolved_at IS NULL
                  AND d.found_at > clock_timestamp() - make_interval(secs => :hours * 3600))
                   AS recent
        FROM locked l JOIN seen USING (sku)
    ),
    recorded AS (
        INSERT INTO drift (group_id, sku, kind, market_count, market_updated_at, our_value,
                           repaired)
        SELECT :c, sku, kind, market_count, market_updated_at, acked_value, recent < :after
        FROM judged WHERE drifted
        RETURNING sku, kind, repaired
    ),
    touched AS (
        UPDATE stock s SET
            verified_at = clock_timestamp(),
            version = CASE WHEN j.drifted AND j.recent < :after THEN s.version + 1
                           ELSE s.version END,
            changed_at = CASE WHEN j.drifted AND j.recent < :after THEN clock_timestamp()
                              ELSE s.changed_at END,
            -- sent with updatedAt = now: never older than the Market's own for the offer
            last_occurred_at = CASE WHEN j.drifted AND j.recent < :after
                                    THEN GREATEST(s.last_occurred_at, clock_timestamp())
                                    ELSE s.last_occurred_at END
        FROM judged j WHERE s.ctid = j.row_id
        RETURNING s.sku
    )
    SELECT sku, kind, repaired FROM recorded
""")  # noqa: S608 - built from the constant fragment above; every value is a bound parameter

_COUNT = text("""
    UPDATE campaign SET keys_checked_total = keys_checked_total + :n,
        round_checked = round_checked + :round_n,
        drift_found_total = drift_found_total + :found,
        drift_repaired_total = drift_repaired_total + :repaired
    WHERE campaign_id = :c
""")

_ROUND = text("""
    SELECT round_started_at, round_keys, round_checked,
           EXTRACT(EPOCH FROM clock_timestamp() - round_started_at) AS elapsed
    FROM campaign WHERE campaign_id = :c
""")

# A route's parking (401/403/404) is on its own row: the campaign's for v2, the business's route
# key for v3 (`domain.route`), not the v3 campaign's.
_PARKED = text("SELECT parked_reason FROM campaign WHERE campaign_id = :r")

_BEGIN_ROUND = text("""
    UPDATE campaign SET round_started_at = clock_timestamp(), round_checked = 0,
        round_keys = (SELECT count(*) FROM stock s
                      WHERE s.group_id = :c AND s.version = s.acked_version
                        AND s.acked_at IS NOT NULL)
    WHERE campaign_id = :c
""")

_END_ROUND = text("""
    UPDATE campaign SET last_full_sweep_at = clock_timestamp(), round_started_at = NULL,
        round_keys = NULL, round_checked = 0
    WHERE campaign_id = :c
""")

_FULL_SWEEP = text("UPDATE campaign SET last_full_sweep_at = :at WHERE campaign_id = :c")

_DUE = text(f"""
    SELECT count(*) FROM stock s
    WHERE s.group_id = :c AND s.version = s.acked_version AND s.acked_at IS NOT NULL
      AND s.verified_at < :before AND {NOT_CLAIMED}
""")  # noqa: S608 - built from the constant fragment above; every value is a bound parameter

_NOW = text("SELECT clock_timestamp()")

_CAMPAIGNS = text("SELECT campaign_id FROM campaign WHERE campaign_id > 0 ORDER BY campaign_id")

_WAREHOUSE = text("""
    SELECT warehouse_id, EXTRACT(EPOCH FROM clock_timestamp() - warehouse_checked_at) AS age
    FROM campaign WHERE campaign_id = :c
""")
_SET_WAREHOUSE = text("""
    UPDATE campaign SET warehouse_id = :w, warehouse_checked_at = clock_timestamp()
    WHERE campaign_id = :c
""")

# A key keeps drifting while it has an unrepaired, unresolved drift found in the last 24 hours:
# the one rule, on `drift`'s columns, of `stocksync verify`, `resync --drifting`, status and the
# scrape.
KEEPS_DRIFTING = (
    "NOT repaired AND resolved_at IS NULL AND found_at > clock_timestamp() - interval '24 hours'"
)
_KEEPS_DRIFTING = text(f"""
    SELECT DISTINCT sku FROM drift WHERE group_id = :c AND {KEEPS_DRIFTING} ORDER BY sku
""")  # noqa: S608 - built from the constant fragment above; every value is a bound parameter


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """A read's answer, and the offers of the campaign's own warehouse by SKU (None: unusable,
    with `problem` saying why)."""

    answer: MarketAnswer
    offers: dict[str, MarketStock] | None
    problem: str | None = None


class StockReader(Protocol):
    """Reads up to 500 SKUs of a campaign back from the Market (one request)."""

    def read(self, campaign_id: int, skus: list[str]) -> ReadOutcome:
        """One request; never raises for an answer or a failure."""
        ...


class V2Reader:
    """getStocks of a v2 campaign: the count of `stock_type` in the campaign's own warehouse.

    The warehouse is learned once: the campaign's business from `GET /v2/campaigns`, then the
    warehouse `POST /v2/businesses/{id}/warehouses` lists with the campaign's id (kept in
    `campaign.warehouse_id`). Not learned (the account does not list it), an answer with a single
    warehouse is taken as the campaign's; one with several is not used (the sweep says so).
    """

    def __init__(self, engine: Engine, client: MarketClient, stock_type: str) -> None:
        self.engine = engine
        self.client = client
        self.stock_type = stock_type

    def warehouse_of(self, campaign_id: int) -> int | None:
        """The campaign's own warehouse id, discovered at most once an hour until found."""
        with self.engine.connect() as conn:
            row = conn.execute(_WAREHOUSE, {"c": campaign_id}).first()
        if row is not None and row.warehouse_id is not None:
            return int(row.warehouse_id)
        if row is not None and row.age is not None and float(row.age) < WAREHOUSE_RETRY_SECONDS:
            return None
        found = None
        reader = MarketReader(self.client)
        try:
            business = next(
                (c.business_id for c in reader.campaigns() if c.id == campaign_id), None
            )
            if business is not None:
                found = next(
                    (
                        w.id
                        for w in reader.warehouses(business, [campaign_id])
                        if w.campaign_id == campaign_id
                    ),
                    None,
                )
        except MarketReadError as exc:
            log_event(
                log,
                logging.WARNING,
                "verify_warehouse_unknown",
                campaign=campaign_id,
                reason=str(exc),
            )
        with self.engine.begin() as conn:
            conn.execute(_SET_WAREHOUSE, {"c": campaign_id, "w": found})
        return found

    def read(self, campaign_id: int, skus: list[str]) -> ReadOutcome:
        answer = self.client.get_stocks(campaign_id, skus)
        if answer.status != 200:
            return ReadOutcome(answer, None, answer.reason())
        try:
            warehouses = parse_warehouses(answer.body, self.stock_type)
        except AnswerError as exc:
            return ReadOutcome(answer, None, f"unexpected getStocks answer: {exc}")
        try:
            own = own_warehouse(warehouses, self.warehouse_of(campaign_id))
        except UnknownWarehouse as exc:
            return ReadOutcome(answer, None, str(exc))
        return ReadOutcome(answer, dict(warehouses.get(own, {})) if own is not None else {})


class V3Reader:
    """The v3 read of a v3 campaign: its business and partner warehouse from the routing, the
    count of `stock_type` in the answer's offers (the answer is of that warehouse only)."""

    def __init__(self, client: MarketClient, stock_type: str, routing: Routing) -> None:
        self.client = client
        self.stock_type = stock_type
        self.routing = routing

    def read(self, campaign_id: int, skus: list[str]) -> ReadOutcome:
        destination = self.routing.v3[campaign_id]
        warehouse = destination.warehouse_id
        answer = self.client.get_v3_stocks(destination.business_id, warehouse, skus)
        if answer.status != 200:
            return ReadOutcome(answer, None, answer.reason())
        try:
            return ReadOutcome(answer, parse_v3_offers(answer.body, warehouse, self.stock_type))
        except AnswerError as exc:
            return ReadOutcome(answer, None, f"unexpected v3 stocks answer: {exc}")


def campaigns_to_sweep(conn: Connection, routing: Routing) -> list[int]:
    """The campaigns a sweep walks: every v2 campaign sent to (a `campaign` row of a positive
    key; a v3 business's row is its route's, not a campaign's) and every v3 campaign."""
    sent = {int(r[0]) for r in conn.execute(_CAMPAIGNS)}
    return sorted(sent | routing.v3.keys())


@dataclass(slots=True)
class SweepResult:
    """What one or more passes read and found; `stopped` says why a pass ended early."""

    checked: int = 0
    drifted: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in DriftKind})
    repaired: int = 0
    drifted_skus: list[str] = field(default_factory=list)
    left_alone_skus: list[str] = field(default_factory=list)
    complete: bool = False
    stopped: str | None = None

    def add(self, other: SweepResult) -> None:
        """Adds another pass's figures."""
        self.checked += other.checked
        for kind, n in other.drifted.items():
            self.drifted[kind] += n
        self.repaired += other.repaired
        self.drifted_skus += other.drifted_skus
        self.left_alone_skus += other.left_alone_skus
        self.complete = other.complete
        self.stopped = other.stopped


class Verifier:
    """Sweep passes over campaigns, through `limiter` (reads go after sending)."""

    def __init__(
        self,
        engine: Engine,
        limiter: RateLimiter,
        readers: Callable[[int], StockReader],
        period_seconds: float,
        drift_hours: float = 24.0,
        *,
        routing: Routing | None = None,
    ) -> None:
        self.engine = engine
        self.limiter = limiter
        self.readers = readers
        self.period_seconds = period_seconds
        self.drift_hours = drift_hours
        self.routing = routing or Routing({})

    def _read_route(self, campaign_id: int) -> tuple[int, list[int]]:
        """The limiter's key for the campaign's reads, and the key groups it sends for."""
        route = self.routing.route_of(campaign_id)
        if route.method is Method.V3:
            return route.key, self.routing.campaigns_of(route.target)
        return route.key, [campaign_id]

    @contextmanager
    def _turn(self, campaign_id: int) -> Iterator[bool]:
        """True while this process holds the campaign's sweep lock (one pass at a time)."""
        with self.engine.connect() as conn:
            params = {"space": _LOCK_SPACE, "c": campaign_id}
            held = bool(conn.execute(_TRY_LOCK, params).scalar_one())
            conn.commit()
            try:
                yield held
            finally:
                if held:
                    conn.execute(_UNLOCK, params)
                    conn.commit()

    def beat_turn(self) -> AbstractContextManager[bool]:
        """True while this process holds the beat's sweep lock: one beat pass at a time across
        every worker, so the sweep never holds more than one pool process (key 0: no campaign)."""
        return self._turn(_BEAT_PASS)

    def paced_pass(self, campaign_id: int, max_seconds: float, short_wait: float) -> SweepResult:
        """The beat's pass: what the round's pace allows now, within `max_seconds`."""
        route_key, _ = self._read_route(campaign_id)
        with self._turn(campaign_id) as held:
            if not held:
                return SweepResult(stopped="another pass is running")
            with self.engine.begin() as conn:
                campaign_health.lock(conn, campaign_id)  # the row exists from here on
                if conn.execute(_PARKED, {"r": route_key}).scalar() is not None:
                    return SweepResult(stopped=STOPPED_PARKED)
                row = conn.execute(_ROUND, {"c": campaign_id}).one()
                if row.round_started_at is None or not row.round_keys:  # no keys: count again
                    conn.execute(_BEGIN_ROUND, {"c": campaign_id})
                    row = conn.execute(_ROUND, {"c": campaign_id}).one()
            allowance = sweep_allowance(
                int(row.round_keys or 0),
                int(row.round_checked),
                float(row.elapsed or 0.0),
                self.period_seconds,
            )
            if allowance <= 0:
                return SweepResult()
            result = self._read_keys(
                campaign_id=campaign_id,
                before=row.round_started_at,
                allowance=allowance,
                max_seconds=max_seconds,
                short_wait=short_wait,
                paced=True,
            )
            if result.complete:
                with self.engine.begin() as conn:
                    conn.execute(_END_ROUND, {"c": campaign_id})
            return result

    def due(self, campaign_id: int, before: datetime) -> int:
        """Keys a sweep started at `before` has still to read (for a progress bar)."""
        with self.engine.connect() as conn:
            return int(conn.execute(_DUE, {"c": campaign_id, "before": before}).scalar_one())

    def now(self) -> datetime:
        """The database's clock."""
        with self.engine.connect() as conn:
            moment: datetime = conn.execute(_NOW).scalar_one()
            return moment

    def sweep_now(
        self,
        campaign_id: int,
        before: datetime,
        on_batch: Callable[[int], object] | None = None,
        max_seconds: float = 3600.0,
    ) -> SweepResult:
        """Reads every key of the campaign not read since `before` (`stocksync verify`)."""
        deadline = time.monotonic() + max_seconds
        total = SweepResult()
        while True:
            with self._turn(campaign_id) as held:
                if held:
                    result = self._read_keys(
                        campaign_id=campaign_id,
                        before=before,
                        allowance=None,
                        max_seconds=max(0.0, deadline - time.monotonic()),
                        short_wait=max_seconds,
                        paced=False,
                        on_batch=on_batch,
                    )
                    total.add(result)
                    if result.complete:
                        with self.engine.begin() as conn:
                            conn.execute(_FULL_SWEEP, {"c": campaign_id, "at": before})
                        return total
                    if result.stopped is not None:
                        return total
            if time.monotonic() >= deadline:
                total.stopped = "time ran out"
                return total
            time.sleep(0.2)  # a beat pass holds the campaign: it ends within seconds

    def _read_keys(
        self,
        *,
        campaign_id: int,
        before: datetime,
        allowance: int | None,
        max_seconds: float,
        short_wait: float,
        paced: bool,
        on_batch: Callable[[int], object] | None = None,
    ) -> SweepResult:
        result = SweepResult()
        deadline = time.monotonic() + max_seconds
        reader = self.readers(campaign_id)
        while allowance is None or allowance > 0:
            if time.monotonic() >= deadline:
                result.stopped = "time ran out"
                return result
            wanted = READ_OFFER_IDS_MAX if allowance is None else min(allowance, 500)
            with self.engine.begin() as conn:
                conn.execute(_ORDERED_SCANS_ONLY)
                rows = conn.execute(_PICK, {"c": campaign_id, "before": before, "n": wanted}).all()
            if not rows:
                result.complete = True
                return result
            permit = self._permit(
                campaign_id,
                offers=len(rows),
                deadline=deadline,
                short_wait=short_wait,
                paced=paced,
                out=result,
            )
            if permit is None:
                return result
            outcome = reader.read(campaign_id, [r.sku for r in rows])
            self.limiter.finish(permit, outcome.answer)
            if outcome.offers is None:
                result.stopped = outcome.problem or "read failed"
                log_event(
                    log,
                    logging.WARNING,
                    "verify_read_failed",
                    campaign=campaign_id,
                    reason=result.stopped,
                )
                return result
            checks = check_keys([(r.sku, int(r.acked_value)) for r in rows], outcome.offers)
            self._record(campaign_id, checks, rows[0].picked_at, paced, result)
            if on_batch is not None:
                on_batch(len(rows))
            if allowance is not None:
                allowance -= len(rows)
            if len(rows) < wanted:
                result.complete = True
                return result
        return result

    def _permit(
        self,
        campaign_id: int,
        *,
        offers: int,
        deadline: float,
        short_wait: float,
        paced: bool,
        out: SweepResult,
    ) -> Permit | None:
        """Leave for one read, waiting up to `short_wait` at a time; None (and why) otherwise.

        A paced pass gives way at once when sending waits (its pool slot is the pushes'); a
        sweep now waits for sending up to SENDING_PATIENCE_SECONDS."""
        asked = time.monotonic()
        key, groups = self._read_route(campaign_id)
        while True:
            decision = self.limiter.acquire(key, offers, READ, groups=groups)
            if isinstance(decision, Permit):
                return decision
            if decision.reason == PARKED:  # the route gets only probes until it works again
                out.stopped = STOPPED_PARKED
                return None
            left = deadline - time.monotonic()
            sending = decision.reason == "sending first"
            if sending and (paced or time.monotonic() - asked > SENDING_PATIENCE_SECONDS):
                out.stopped = "sending first" + (
                    "" if paced else ": sending did not finish (is a worker running?)"
                )
                return None
            if decision.seconds > short_wait or decision.seconds > left:
                out.stopped = f"waiting ({decision.reason}) {decision.seconds:.1f}s"
                return None
            time.sleep(decision.seconds)

    def _record(
        self,
        campaign_id: int,
        checks: Sequence[KeyCheck],
        read_started: datetime,
        paced: bool,
        out: SweepResult,
    ) -> None:
        params = {
            "c": campaign_id,
            "skus": [c.sku for c in checks],
            "kinds": [c.drift.value if c.drift else None for c in checks],
            "counts": [c.market.count if c.market else None for c in checks],
            "updated": [c.market.updated_at if c.market else None for c in checks],
            "ours": [c.acked_value for c in checks],
            "read_started": read_started,
            "hours": self.drift_hours,
            "after": KEEPS_DRIFTING_AFTER,
        }
        with self.engine.begin() as conn:
            recorded = conn.execute(_RECORD, params).all()
            repaired = sum(1 for r in recorded if r.repaired)
            conn.execute(
                _COUNT,
                {
                    "c": campaign_id,
                    "n": len(checks),
                    "round_n": len(checks) if paced else 0,
                    "found": len(recorded),
                    "repaired": repaired,
                },
            )
            counters.add(
                conn,
                [
                    ((counters.DRIFT_FOUND, campaign_id, ""), len(recorded)),
                    ((counters.DRIFT_REPAIRED, campaign_id, ""), repaired),
                ],
            )
        out.checked += len(checks)
        out.repaired += repaired
        for r in recorded:
            out.drifted[r.kind] += 1
            out.drifted_skus.append(r.sku)
            if not r.repaired:
                out.left_alone_skus.append(r.sku)
        if recorded:
            log_event(
                log,
                logging.WARNING,
                "drift",
                campaign=campaign_id,
                found=len(recorded),
                repaired=repaired,
            )


def keeps_drifting(conn: Connection, campaign_id: int) -> list[str]:
    """The campaign's keys that keep drifting (left alone until a resync)."""
    return [r[0] for r in conn.execute(_KEEPS_DRIFTING, {"c": campaign_id})]
