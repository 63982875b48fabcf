"""The global rate limiter of every route, kept in PostgreSQL on the database's clock.

One limiter, two kinds of resource (`domain.route`): a v2 route (a campaign) counts SKUs, at most
`limit` in the window; a v3 route (a business) counts requests, at most `v3_requests_per_minute`.
Both have at most `max_parallel` requests in flight. `campaign_id` below is a route key.

Every worker and process asks here before a request: at most `limit` SKUs in any rolling window
(60 s plus a margin for the time a request takes to arrive) and at most `max_parallel` requests in
flight. A request counts from its start until 60 s after it ended: the Market counts it when it
arrives, somewhere in between. SKUs of 5xx answers are given back (the Market does not count
them); `X-RateLimit-Resource-Remaining` raises the local count when the Market saw more; a 420
blocks the campaign until `X-RateLimit-Resource-Until`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, text

from domain.rate_window import seconds_until_room
from domain.route import Method, Route
from worker import campaign_health
from worker.market_client import MarketAnswer

WINDOW_SECONDS = 60.0
ARRIVAL_MARGIN_SECONDS = 1.0
# A request never finished (its worker died) is taken to have ended this long after it started:
# longer than a connect plus a read timeout.
UNFINISHED_REQUEST_SECONDS = 30.0
# A 420 without a readable -Until blocks for a minute; an absurd -Until is believed for an hour.
DEFAULT_BLOCK = timedelta(seconds=60)
LONGEST_BLOCK = timedelta(hours=1)
# While all parallel slots are taken, ask again after this long.
PARALLEL_WAIT_SECONDS = 0.05

# `amount` is what a request counts against its route's limit: SKUs (v2) or one request (v3;
# a 5xx is not counted, a correction counts the requests the Market saw beyond ours).
_WINDOW = text("""
    SELECT CASE WHEN NOT :requests THEN skus
                WHEN correction THEN skus
                WHEN status >= 500 THEN 0
                ELSE 1 END AS amount,
           COALESCE(finished_at, started_at + make_interval(secs => :unfinished))
               + make_interval(secs => :window) AS leaves_at,
           finished_at IS NULL
               AND started_at > clock_timestamp() - make_interval(secs => :unfinished) AS in_flight
    FROM market_request
    WHERE campaign_id = :c
      AND started_at > clock_timestamp() - make_interval(secs => :window + :unfinished)
      AND COALESCE(finished_at, started_at + make_interval(secs => :unfinished))
          > clock_timestamp() - make_interval(secs => :window)
""")

_START = text("""
    INSERT INTO market_request (campaign_id, skus, started_at)
    VALUES (:c, :skus, clock_timestamp()) RETURNING id
""")

_FINISH = text("""
    UPDATE market_request
    SET finished_at = clock_timestamp(), status = :status,
        skus = CASE WHEN :status >= 500 THEN 0 ELSE skus END
    WHERE id = :id
""")

_CANCEL = text("DELETE FROM market_request WHERE id = :id AND finished_at IS NULL")

_CORRECT = text("""
    INSERT INTO market_request (campaign_id, skus, started_at, finished_at, correction)
    VALUES (:c, :skus, clock_timestamp(), clock_timestamp(), true)
""")


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to send one request now; hand it back to `finish`."""

    request_id: int
    campaign_id: int


@dataclass(frozen=True, slots=True)
class Wait:
    """No leave yet: ask again after `seconds`, for `reason` (`420`, `window`, `parallel`)."""

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


class RateLimiter:
    """Per route: SKUs (v2) or requests (v3) per rolling minute and requests in flight, across
    all workers."""

    def __init__(
        self,
        engine: Engine,
        skus_per_minute: int,
        max_parallel: int,
        v3_requests_per_minute: int = 50,
    ) -> None:
        self.engine = engine
        self.limit = skus_per_minute
        self.max_parallel = max_parallel
        self.v3_limit = v3_requests_per_minute

    def limit_of(self, route_key: int) -> int:
        """The route's limit per rolling minute: SKUs for a campaign, requests for a business."""
        return self.limit if Route.of_key(route_key).method is Method.V2 else self.v3_limit

    def amount_of(self, route_key: int, skus: int) -> int:
        """What a request of `skus` items counts against its route's limit."""
        return skus if Route.of_key(route_key).method is Method.V2 else 1

    def usage(self, conn: Connection, campaign_id: int) -> Usage:
        """Locks the route's row (callers serialize on it) and reads its use of the limit."""
        campaign = campaign_health.lock(conn, campaign_id)
        rows = conn.execute(
            _WINDOW,
            {
                "c": campaign_id,
                "window": WINDOW_SECONDS + ARRIVAL_MARGIN_SECONDS,
                "unfinished": UNFINISHED_REQUEST_SECONDS,
                "requests": Route.of_key(campaign_id).method is Method.V3,
            },
        ).all()
        return Usage(
            used_in_window=sum(r.amount for r in rows),
            in_flight=sum(1 for r in rows if r.in_flight),
            window=[(r.amount, r.leaves_at) for r in rows],
            now=campaign.now,
            blocked_until=campaign.blocked_until,
            parked_reason=campaign.parked_reason,
        )

    def acquire(self, campaign_id: int, skus: int) -> Permit | Wait:
        """Leave for a request of `skus` SKUs now, or how long to wait for it."""
        with self.engine.begin() as conn:
            use = self.usage(conn, campaign_id)
            if use.blocked_until is not None and use.blocked_until > use.now:
                return Wait((use.blocked_until - use.now).total_seconds(), "420")
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
            request_id = conn.execute(_START, {"c": campaign_id, "skus": skus}).scalar_one()
            return Permit(request_id, campaign_id)

    def cancel(self, permit: Permit) -> None:
        """Gives back the leave of a request that was not sent after all."""
        with self.engine.begin() as conn:
            conn.execute(_CANCEL, {"id": permit.request_id})

    def finish(self, permit: Permit, answer: MarketAnswer) -> None:
        """Records the answer: 5xx SKUs given back, the Market's own count believed, 420 obeyed."""
        with self.engine.begin() as conn:
            conn.execute(_FINISH, {"id": permit.request_id, "status": answer.status})
            if answer.status == 420 or (answer.limit is not None and answer.remaining is not None):
                use = self.usage(conn, permit.campaign_id)
                if answer.limit is not None and answer.remaining is not None:
                    market_used = answer.limit - answer.remaining
                    if market_used > use.used_in_window:
                        conn.execute(
                            _CORRECT,
                            {"c": permit.campaign_id, "skus": market_used - use.used_in_window},
                        )
                if answer.status == 420:
                    until = answer.until or use.now + DEFAULT_BLOCK
                    until = min(until, use.now + LONGEST_BLOCK)
                    campaign_health.block_until(conn, permit.campaign_id, until)
