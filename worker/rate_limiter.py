"""The global rate limiter of every route, kept in PostgreSQL on the database's clock.

One limiter, two kinds of resource (`domain.route`): a v2 route (a campaign) counts SKUs, at most
`limit` in the window; a v3 route (a business) counts requests, at most `v3_requests_per_minute`.
Both have at most `max_parallel` requests in flight. `campaign_id` below is a route key.

Every worker and process asks here before a request: at most `limit` SKUs in any rolling window
(60 s plus a margin for the time a request takes to arrive) and at most `max_parallel` requests in
flight. A request counts from its start until 60 s after it ended: the Market counts it when it
arrives, somewhere in between. A request is in flight until its answer; one without an answer (a
timeout, a broken connection: the Market may still be working on it) until its deadline, and one
never finished (its worker died) until its deadline too. SKUs of 5xx answers are given back
(the Market does not count them); `X-RateLimit-Resource-Remaining` raises the local count when
the Market saw more; a 420 blocks the campaign until `X-RateLimit-Resource-Until` plus 0.5 s.

Two kinds of request share the ledger and the parallel slots: pushes (updateStocks, SKUs per
window) and reads (getStocks, offers per window, its own limit: `read_limit`; a v3 read counts
one request against `v3_read_limit`, per business). Sending goes first:
a read takes only a slot sending does not need right now. Sending needs a slot for each live claim
(a push queued or under way) and one for each further full batch of unclaimed pending keys (the
drain gives those the rest of the slots); a part batch pending with no claim needs one, and with a
claim it goes with that push's next claim. A read may start when a slot is free and the slots
sending needs, the reads in flight and itself fit in `max_parallel`. So a steady stream of
changes (one push at a time) leaves a slot to the sweep, and a backlog (full batches waiting)
takes every slot until it is sent. A 420 on a read holds back only reads. A parked route is not
read at all (it gets only probes, which are pushes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row, text
from sqlalchemy.exc import OperationalError

from domain.market_rules import SKUS_PER_REQUEST_MAX
from domain.rate_window import seconds_until_room
from domain.route import Method, Route
from worker import campaign_health, counters
from worker.database import is_lock_timeout
from worker.market_client import MarketAnswer

WINDOW_SECONDS = 60.0
ARRIVAL_MARGIN_SECONDS = 1.0
# A request never finished (its worker died), or finished without an answer, is taken to end this
# long after it started unless the caller gives its own total deadline.
UNFINISHED_REQUEST_SECONDS = 30.0
# The Market's own limit of parallel requests per campaign. At most one less is used, so that a
# request we gave up on past its deadline, which the Market may still be serving, has room.
MARKET_MAX_PARALLEL = 4
# A 420's -Until is obeyed with this margin (clocks and rounding to whole seconds).
UNTIL_MARGIN = timedelta(seconds=0.5)
# A 420 without a readable -Until blocks for a minute; an absurd -Until is believed for an hour.
DEFAULT_BLOCK = timedelta(seconds=60)
LONGEST_BLOCK = timedelta(hours=1)
# While all parallel slots are taken, ask again after this long.
PARALLEL_WAIT_SECONDS = 0.05
# A push waits this long at most for its campaign's row (planners hold it for milliseconds);
# then the campaign is busy and the push hands its keys back (a wait longer than the push sleeps).
BUSY_LOCK_SECONDS = 2.0
BUSY_WAIT_SECONDS = 5.0

_BUSY_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :ms, true)")

# A read waiting for sending to finish asks again after this long.
SENDING_FIRST_WAIT_SECONDS = 0.5
# A read of a parked route: the reason, and how long it is told to wait (a probe decides when
# the route works again; the sweep stops at once).
PARKED = "parked"
PARKED_READ_WAIT_SECONDS = 60.0

PUSH = "push"
READ = "read"

# `amount` is what a request counts against its route's limit: SKUs or offers (v2) or one
# request (v3; a push's 5xx is not counted, a correction counts the requests the Market saw
# beyond ours).
_WINDOW = text("""
    SELECT CASE WHEN NOT :requests OR correction THEN skus
                WHEN kind = 'read' THEN 1
                WHEN status >= 500 THEN 0
                ELSE 1 END AS amount,
           kind,
           COALESCE(finished_at, started_at + make_interval(secs => :unfinished))
               + make_interval(secs => :window) AS leaves_at,
           (finished_at IS NULL
               AND started_at > clock_timestamp() - make_interval(secs => :unfinished))
           OR finished_at > clock_timestamp() AS in_flight
    FROM market_request
    WHERE campaign_id = :c
      AND started_at > clock_timestamp() - make_interval(secs => :window + :unfinished)
      AND COALESCE(finished_at, started_at + make_interval(secs => :unfinished))
          > clock_timestamp() - make_interval(secs => :window)
""")

_START = text("""
    INSERT INTO market_request (campaign_id, skus, started_at, kind)
    VALUES (:c, :skus, clock_timestamp(), :kind) RETURNING id
""")

# No answer (status 0): the request may still be working at the Market, so it ends, for the
# limiter, at its deadline.
_FINISH = text("""
    UPDATE market_request
    SET finished_at = CASE WHEN :status = 0
            THEN GREATEST(clock_timestamp(), started_at + make_interval(secs => :deadline))
            ELSE clock_timestamp() END,
        status = :status,
        skus = CASE WHEN :status >= 500 THEN 0 ELSE skus END
    WHERE id = :id
    RETURNING EXTRACT(EPOCH FROM LEAST(finished_at, clock_timestamp()) - started_at)
""")

_CANCEL = text("DELETE FROM market_request WHERE id = :id AND finished_at IS NULL")

_CORRECT = text("""
    INSERT INTO market_request (campaign_id, skus, started_at, finished_at, correction, kind)
    VALUES (:c, :skus, clock_timestamp(), clock_timestamp(), true, :kind)
""")

# What sending needs of the campaign's slots: its live claims (pushes queued or under way), the
# SKUs they hold, and its pending keys counted up to :cap beyond those (walks of
# `push_claim_campaign` and `stock_pending`, stopping at the limit).
_SENDING_NEEDS = text("""
    WITH claimed AS (
        SELECT count(*) AS claims, COALESCE(sum(skus), 0) AS skus FROM push_claim
        WHERE campaign_id = :c AND lease_until > clock_timestamp()
    )
    SELECT claimed.claims,
           GREATEST(0, (SELECT count(*) FROM (
                SELECT 1 FROM stock s
                WHERE s.version > s.acked_version
                  AND (s.parked_version IS NULL OR s.parked_version < s.version)
                  AND s.group_id = ANY(CAST(:groups AS bigint[]))
                LIMIT :cap + claimed.skus) AS p) - claimed.skus) AS pending
    FROM claimed
""")


def _window_rows(conn: Connection, route_key: int, deadline: float) -> Sequence[Row[Any]]:
    """The requests of a route that the window counts now: amount, kind, when each leaves it."""
    return conn.execute(
        _WINDOW,
        {
            "c": route_key,
            "window": WINDOW_SECONDS + ARRIVAL_MARGIN_SECONDS,
            "unfinished": deadline,
            "requests": Route.of_key(route_key).method is Method.V3,
        },
    ).all()


def used_in_window(conn: Connection, route_key: int, deadline: float) -> int:
    """What the limiter counts against a route's limit now (SKUs for v2, requests for v3), read
    without locking the route's row: the figure status and metrics compare with the limit."""
    return sum(r.amount for r in _window_rows(conn, route_key, deadline) if r.kind != READ)


def sending_needs(claims: int, pending: int) -> int:
    """Slots sending needs now: one per live claim, one per further full batch of unclaimed
    pending keys; a part batch needs one only when no claim will take it with its next batch."""
    full, part = divmod(pending, SKUS_PER_REQUEST_MAX)
    return claims + full + (1 if part and claims == 0 else 0)


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request now; hand it back to `finish`."""

    request_id: int
    campaign_id: int
    kind: str = PUSH


@dataclass(frozen=True, slots=True)
class Wait:
    """No leave yet: ask again after `seconds`, for `reason` (`420`, `window`, `parallel`,
    `busy`, `sending first`; a read also `parked`)."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """A route's use of its limit right now (`used_in_window`: SKUs for v2, requests for v3)."""

    used_in_window: int
    in_flight: int
    window: list[tuple[int, datetime]]
    now: datetime
    blocked_until: datetime | None
    parked_reason: str | None
    # Reads: offers in their own window, and a 420 that holds back reads only.
    reads_in_window: int = 0
    read_window: list[tuple[int, datetime]] | None = None
    reads_blocked_until: datetime | None = None
    reads_in_flight: int = 0


def _counted(use: Usage, read: bool) -> int:
    """What this limiter counted in the window of the answered request's kind."""
    return use.reads_in_window if read else use.used_in_window


class RateLimiter:
    """Per route: SKUs (v2) or requests (v3) per rolling minute and requests in flight, across
    all workers."""

    def __init__(
        self,
        engine: Engine,
        skus_per_minute: int,
        max_parallel: int,
        read_offers_per_minute: int = 50_000,
        v3_requests_per_minute: int = 50,
        *,
        v3_read_requests_per_minute: int = 250,
        request_deadline_seconds: float = UNFINISHED_REQUEST_SECONDS,
    ) -> None:
        self.engine = engine
        self.limit = skus_per_minute
        self.max_parallel = min(max_parallel, MARKET_MAX_PARALLEL - 1)
        self.read_limit = read_offers_per_minute
        self.deadline = request_deadline_seconds
        self.v3_limit = v3_requests_per_minute
        self.v3_read_limit = v3_read_requests_per_minute

    def limit_of(self, route_key: int) -> int:
        """The route's limit per rolling minute: SKUs for a campaign, requests for a business."""
        return self.limit if Route.of_key(route_key).method is Method.V2 else self.v3_limit

    def read_limit_of(self, route_key: int) -> int:
        """The route's read limit per rolling minute: offers (v2) or requests (v3)."""
        return (
            self.read_limit if Route.of_key(route_key).method is Method.V2 else self.v3_read_limit
        )

    def amount_of(self, route_key: int, skus: int) -> int:
        """What a request of `skus` items counts against its route's limit."""
        return skus if Route.of_key(route_key).method is Method.V2 else 1

    def usage(self, conn: Connection, campaign_id: int) -> Usage:
        """Locks the route's row (callers serialize on it) and reads its use of the limit."""
        campaign = campaign_health.lock(conn, campaign_id)
        assert campaign is not None  # a waiting lock always returns the row
        return self._read_usage(conn, campaign_id, campaign)

    def try_usage(self, conn: Connection, campaign_id: int) -> Usage | None:
        """`usage`, or None without waiting when another transaction holds the campaign's row."""
        campaign = campaign_health.lock(conn, campaign_id, wait=False)
        return None if campaign is None else self._read_usage(conn, campaign_id, campaign)

    def _read_usage(
        self, conn: Connection, campaign_id: int, campaign: campaign_health.CampaignState
    ) -> Usage:
        rows = _window_rows(conn, campaign_id, self.deadline)
        pushes = [r for r in rows if r.kind != READ]
        reads = [r for r in rows if r.kind == READ]
        return Usage(
            used_in_window=sum(r.amount for r in pushes),
            in_flight=sum(1 for r in rows if r.in_flight),
            window=[(r.amount, r.leaves_at) for r in pushes],
            now=campaign.now,
            blocked_until=campaign.blocked_until,
            parked_reason=campaign.parked_reason,
            reads_in_window=sum(r.amount for r in reads),
            read_window=[(r.amount, r.leaves_at) for r in reads],
            reads_blocked_until=campaign.verify_blocked_until,
            reads_in_flight=sum(1 for r in reads if r.in_flight),
        )

    def acquire(
        self, campaign_id: int, skus: int, kind: str = PUSH, groups: Sequence[int] | None = None
    ) -> Permit | Wait:
        """Leave for a request of `skus` SKUs (a read: offers) now, or how long to wait for it; a
        campaign whose row stays busy for BUSY_LOCK_SECONDS (its holder frozen or cut off) is a
        long `busy` wait, so the push hands its keys back instead of holding a pool process.
        `groups`: the key groups the route sends for (a read's sending first; default the
        route's own key, as for a v2 campaign)."""
        try:
            return self._acquire(campaign_id, skus, kind, list(groups or [campaign_id]))
        except OperationalError as exc:
            if is_lock_timeout(exc):
                return Wait(BUSY_WAIT_SECONDS, "busy")
            raise

    def _acquire(self, campaign_id: int, skus: int, kind: str, groups: list[int]) -> Permit | Wait:
        with self.engine.begin() as conn:
            conn.execute(_BUSY_LOCK_TIMEOUT, {"ms": f"{round(BUSY_LOCK_SECONDS * 1000)}ms"})
            use = self.usage(conn, campaign_id)
            if use.blocked_until is not None and use.blocked_until > use.now:
                return Wait((use.blocked_until - use.now).total_seconds(), "420")
            if kind == READ:
                wait_for = self._read_wait(conn, campaign_id, use, skus, groups)
                if wait_for is not None:
                    return wait_for
            else:
                if use.in_flight >= self.max_parallel:
                    return Wait(PARALLEL_WAIT_SECONDS, "parallel")
                wait = seconds_until_room(
                    use.window,
                    self.limit_of(campaign_id),
                    self.amount_of(campaign_id, skus),
                    use.now,
                )
                if wait > 0:
                    return Wait(wait, "window")
            request_id = conn.execute(
                _START, {"c": campaign_id, "skus": skus, "kind": kind}
            ).scalar_one()
            return Permit(request_id, campaign_id, kind)

    def _read_wait(
        self, conn: Connection, campaign_id: int, use: Usage, offers: int, groups: list[int]
    ) -> Wait | None:
        """Why a read must wait (the route parked, its own 420, slots, sending first, its
        window), or None. A parked route (401/403/404) gets only probes, and a read is none."""
        if use.parked_reason is not None:
            return Wait(PARKED_READ_WAIT_SECONDS, PARKED)
        blocked = use.reads_blocked_until
        if blocked is not None and blocked > use.now:
            return Wait((blocked - use.now).total_seconds(), "420")
        if use.in_flight >= self.max_parallel:
            return Wait(PARALLEL_WAIT_SECONDS, "parallel")
        cap = (self.max_parallel + 1) * SKUS_PER_REQUEST_MAX  # enough to fill every slot
        sending = conn.execute(
            _SENDING_NEEDS, {"c": campaign_id, "cap": cap, "groups": groups}
        ).one()
        needed = sending_needs(int(sending.claims), int(sending.pending))
        if use.reads_in_flight + needed + 1 > self.max_parallel:
            return Wait(SENDING_FIRST_WAIT_SECONDS, "sending first")
        wait = seconds_until_room(
            use.read_window or [],
            self.read_limit_of(campaign_id),
            offers if Route.of_key(campaign_id).method is Method.V2 else 1,
            use.now,
        )
        if wait > 0:
            return Wait(wait, "window")
        return None

    def cancel(self, permit: Permit) -> None:
        """Gives back the leave of a request that was not sent after all."""
        with self.engine.begin() as conn:
            conn.execute(_CANCEL, {"id": permit.request_id})

    def finish(self, permit: Permit, answer: MarketAnswer, waited_seconds: float = 0.0) -> None:
        """Records the answer: 5xx SKUs given back, the Market's own count believed, 420 obeyed;
        the request counted by status, duration and `waited_seconds` (how long the push waited
        for this leave) in the same transaction."""
        with self.engine.begin() as conn:
            seconds = conn.execute(
                _FINISH,
                {"id": permit.request_id, "status": answer.status, "deadline": self.deadline},
            ).scalar_one_or_none()
            if answer.status == 420 or (answer.limit is not None and answer.remaining is not None):
                # A 420's block must be written (waiting at most the lock timeout); the Market's
                # count is only a correction, which the next answer brings again: skipped while
                # the campaign's row is busy.
                read = permit.kind == READ
                if answer.status == 420:
                    use: Usage | None = self.usage(conn, permit.campaign_id)
                else:
                    use = self.try_usage(conn, permit.campaign_id)
                if (
                    use is not None
                    and answer.limit is not None
                    and answer.remaining is not None
                    and answer.limit - answer.remaining > _counted(use, read)
                ):
                    conn.execute(
                        _CORRECT,
                        {
                            "c": permit.campaign_id,
                            "skus": answer.limit - answer.remaining - _counted(use, read),
                            "kind": permit.kind,
                        },
                    )
                if answer.status == 420 and use is not None:
                    until = use.now + DEFAULT_BLOCK
                    if answer.until is not None:
                        # A zoneless -Until (RFC 822 "-0000") is UTC.
                        given = answer.until
                        if given.tzinfo is None:
                            given = given.replace(tzinfo=UTC)
                        until = given + UNTIL_MARGIN
                    until = min(until, use.now + LONGEST_BLOCK)
                    if read:  # a read's 420 holds back the sweep, never sending
                        campaign_health.block_reads_until(conn, permit.campaign_id, until)
                    else:
                        campaign_health.block_until(conn, permit.campaign_id, until)
            # Requests by status are the pushes' (reads are counted by the sweep's own figures).
            if seconds is not None and permit.kind != READ:
                c = permit.campaign_id
                counters.add(
                    conn,
                    [
                        ((counters.MARKET_REQUESTS, c, str(answer.status)), 1),
                        ((counters.MARKET_RATE_LIMITED, c, ""), int(answer.status == 420)),
                        *counters.duration_increments(c, float(seconds)),
                        *counters.limiter_wait_increments(c, waited_seconds),
                    ],
                )
