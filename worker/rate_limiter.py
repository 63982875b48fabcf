"""The global per-campaign rate limiter, kept in PostgreSQL on the database's clock.

Every worker and process asks here before a request: at most `limit` SKUs in any rolling window
(60 s plus a margin for the time a request takes to arrive) and at most `max_parallel` requests in
flight. A request counts from its start until 60 s after it ended: the Market counts it when it
arrives, somewhere in between. A request is in flight until its answer; one without an answer (a
timeout, a broken connection: the Market may still be working on it) until its deadline, and one
never finished (its worker died) until its deadline too. SKUs of 5xx answers are given back
(the Market does not count them); `X-RateLimit-Resource-Remaining` raises the local count when
the Market saw more; a 420 blocks the campaign until `X-RateLimit-Resource-Until` plus 0.5 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from domain.rate_window import seconds_until_room
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

_WINDOW = text("""
    SELECT skus,
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
    INSERT INTO market_request (campaign_id, skus, started_at)
    VALUES (:c, :skus, clock_timestamp()) RETURNING id
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
    """No leave yet: ask again after `seconds`, for `reason` (`420`, `window`, `parallel`,
    `busy`)."""

    seconds: float
    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """A campaign's use of its limit right now."""

    skus_in_window: int
    in_flight: int
    window: list[tuple[int, datetime]]
    now: datetime
    blocked_until: datetime | None
    parked_reason: str | None


class RateLimiter:
    """Per-campaign SKUs per rolling minute and requests in flight, across all workers."""

    def __init__(
        self,
        engine: Engine,
        skus_per_minute: int,
        max_parallel: int,
        request_deadline_seconds: float = UNFINISHED_REQUEST_SECONDS,
    ) -> None:
        self.engine = engine
        self.limit = skus_per_minute
        self.max_parallel = min(max_parallel, MARKET_MAX_PARALLEL - 1)
        self.deadline = request_deadline_seconds

    def usage(self, conn: Connection, campaign_id: int) -> Usage:
        """Locks the campaign's row (callers serialize on it) and reads its use of the limit."""
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
        rows = conn.execute(
            _WINDOW,
            {
                "c": campaign_id,
                "window": WINDOW_SECONDS + ARRIVAL_MARGIN_SECONDS,
                "unfinished": self.deadline,
            },
        ).all()
        return Usage(
            skus_in_window=sum(r.skus for r in rows),
            in_flight=sum(1 for r in rows if r.in_flight),
            window=[(r.skus, r.leaves_at) for r in rows],
            now=campaign.now,
            blocked_until=campaign.blocked_until,
            parked_reason=campaign.parked_reason,
        )

    def acquire(self, campaign_id: int, skus: int) -> Permit | Wait:
        """Leave for a request of `skus` SKUs now, or how long to wait for it; a campaign whose
        row stays busy for BUSY_LOCK_SECONDS (its holder frozen or cut off) is a long `busy`
        wait, so the push hands its keys back instead of holding a pool process."""
        try:
            return self._acquire(campaign_id, skus)
        except OperationalError as exc:
            if is_lock_timeout(exc):
                return Wait(BUSY_WAIT_SECONDS, "busy")
            raise

    def _acquire(self, campaign_id: int, skus: int) -> Permit | Wait:
        with self.engine.begin() as conn:
            conn.execute(_BUSY_LOCK_TIMEOUT, {"ms": f"{round(BUSY_LOCK_SECONDS * 1000)}ms"})
            use = self.usage(conn, campaign_id)
            if use.blocked_until is not None and use.blocked_until > use.now:
                return Wait((use.blocked_until - use.now).total_seconds(), "420")
            if use.in_flight >= self.max_parallel:
                return Wait(PARALLEL_WAIT_SECONDS, "parallel")
            wait = seconds_until_room(use.window, self.limit, skus, use.now)
            if wait > 0:
                return Wait(wait, "window")
            request_id = conn.execute(_START, {"c": campaign_id, "skus": skus}).scalar_one()
            return Permit(request_id, campaign_id)

    def cancel(self, permit: Permit) -> None:
        """Gives back the leave of a request that was not sent after all."""
        with self.engine.begin() as conn:
            conn.execute(_CANCEL, {"id": permit.request_id})

    def finish(self, permit: Permit, answer: MarketAnswer) -> None:
        """Records the answer: 5xx SKUs given back, the Market's own count believed, 420 obeyed;
        the request counted by status and duration in the same transaction."""
        with self.engine.begin() as conn:
            seconds = conn.execute(
                _FINISH,
                {"id": permit.request_id, "status": answer.status, "deadline": self.deadline},
            ).scalar_one_or_none()
            if answer.status == 420 or (answer.limit is not None and answer.remaining is not None):
                # A 420's block must be written (waiting at most the lock timeout); the Market's
                # count is only a correction, which the next answer brings again: skipped while
                # the campaign's row is busy.
                if answer.status == 420:
                    use: Usage | None = self.usage(conn, permit.campaign_id)
                else:
                    use = self.try_usage(conn, permit.campaign_id)
                if (
                    use is not None
                    and answer.limit is not None
                    and answer.remaining is not None
                    and answer.limit - answer.remaining > use.skus_in_window
                ):
                    conn.execute(
                        _CORRECT,
                        {
                            "c": permit.campaign_id,
                            "skus": answer.limit - answer.remaining - use.skus_in_window,
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
                    campaign_health.block_until(conn, permit.campaign_id, until)
            if seconds is not None:  # else the request was already cancelled: it never went
                c = permit.campaign_id
                counters.add(
                    conn,
                    [
                        ((counters.MARKET_REQUESTS, c, str(answer.status)), 1),
                        ((counters.MARKET_RATE_LIMITED, c, ""), int(answer.status == 420)),
                        *counters.duration_increments(c, float(seconds)),
                    ],
                )
