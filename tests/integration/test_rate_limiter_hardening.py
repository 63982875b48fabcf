"""The limiter against PostgreSQL (issue 13, item 12): a request counts as in flight until it
ends, a timed-out one until its deadline, one slot is kept for a request the Market may still
be working on, and a 420's -Until without a zone blocks the campaign."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, text

from worker.market_client import MarketAnswer, http_date
from worker.rate_limiter import UNTIL_MARGIN, Permit, RateLimiter, Wait

DEADLINE = 25.0


def _limiter(engine: Engine, max_parallel: int = 1) -> RateLimiter:
    return RateLimiter(engine, 100_000, max_parallel, request_deadline_seconds=DEADLINE)


def _age(engine: Engine, permit: Permit, seconds: float) -> None:
    """Moves a request's times `seconds` into the past, as if that much time had passed."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE market_request SET started_at = started_at - make_interval(secs => :s), "
                "finished_at = finished_at - make_interval(secs => :s) WHERE id = :id"
            ),
            {"s": seconds, "id": permit.request_id},
        )


def _permit(limiter: RateLimiter, campaign: int = 7) -> Permit:
    decision = limiter.acquire(campaign, 10)
    assert isinstance(decision, Permit), decision
    return decision


def test_a_request_running_longer_than_30_seconds_still_counts_in_flight(engine: Engine) -> None:
    limiter = RateLimiter(engine, 100_000, 1, request_deadline_seconds=60.0)
    permit = _permit(limiter)
    _age(engine, permit, 40)
    assert limiter.acquire(7, 10) == Wait(0.05, "parallel")


def test_a_request_never_finished_stops_counting_after_its_deadline(engine: Engine) -> None:
    limiter = _limiter(engine)
    permit = _permit(limiter)
    _age(engine, permit, DEADLINE + 1)
    assert isinstance(limiter.acquire(7, 10), Permit)


def test_a_timed_out_request_counts_in_flight_until_its_deadline(engine: Engine) -> None:
    limiter = _limiter(engine)
    permit = _permit(limiter)
    limiter.finish(permit, MarketAnswer(status=0, failure="ReadTimeout on PUT /v2/…"))
    # The Market may still be working on it: no new request yet
    assert limiter.acquire(7, 10) == Wait(0.05, "parallel")
    _age(engine, permit, DEADLINE + 1)
    assert isinstance(limiter.acquire(7, 10), Permit)


def test_an_answered_request_frees_its_slot_at_once(engine: Engine) -> None:
    limiter = _limiter(engine)
    limiter.finish(_permit(limiter), MarketAnswer(status=200))
    assert isinstance(limiter.acquire(7, 10), Permit)


def test_four_parallel_requests_leave_one_slot_of_the_markets_four_free(engine: Engine) -> None:
    limiter = _limiter(engine, max_parallel=4)
    for _ in range(3):
        _permit(limiter)
    assert limiter.acquire(7, 10) == Wait(0.05, "parallel")


def test_a_420_whose_until_has_no_zone_blocks_the_campaign_until_then_plus_a_margin(
    engine: Engine,
) -> None:
    limiter = _limiter(engine)
    permit = _permit(limiter)
    with engine.connect() as conn:
        now = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    until_text = (now + timedelta(seconds=30)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    until = http_date(until_text)
    limiter.finish(permit, MarketAnswer(status=420, until=until))
    with engine.connect() as conn:
        blocked = conn.execute(text("SELECT blocked_until FROM campaign WHERE campaign_id = 7"))
        blocked_until = blocked.scalar_one()
    assert until is not None
    assert blocked_until == until + UNTIL_MARGIN
    decision = limiter.acquire(7, 10)
    assert isinstance(decision, Wait) and decision.reason == "420"
