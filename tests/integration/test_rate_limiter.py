"""The rate limiter against a real PostgreSQL, called directly (no worker, no Market)."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, text

from domain.market_rules import SKUS_PER_REQUEST_MAX
from tests.integration.drain_support import put_changes
from worker.market_client import MarketAnswer
from worker.rate_limiter import READ, UNTIL_MARGIN, Permit, RateLimiter, Wait, sending_needs

CAMPAIGN = 41


def _db_now(engine: Engine) -> datetime:
    with engine.connect() as conn:
        now: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        return now


def _skus_in_window(limiter: RateLimiter) -> int:
    with limiter.engine.begin() as conn:
        return limiter.usage(conn, CAMPAIGN).used_in_window


def _permit(limiter: RateLimiter, skus: int) -> Permit:
    decision = limiter.acquire(CAMPAIGN, skus)
    assert isinstance(decision, Permit), decision
    return decision


def test_a_420_with_until_blocks_the_campaign_until_that_moment(engine: Engine) -> None:
    # Given a request answered 420 with -Until two seconds ahead on the database's clock
    limiter = RateLimiter(engine, skus_per_minute=1000, max_parallel=4)
    permit = _permit(limiter, 10)
    until = _db_now(engine) + timedelta(seconds=2)
    limiter.finish(permit, MarketAnswer(420, until=until))
    # When another request asks for leave at once
    decision = limiter.acquire(CAMPAIGN, 1)
    # Then it waits for the 420 until -Until plus its margin (clocks, whole seconds), not longer
    margin = UNTIL_MARGIN.total_seconds()
    assert isinstance(decision, Wait)
    assert decision.reason == "420"
    assert 1.0 + margin < decision.seconds <= 2.0 + margin
    # And once -Until has passed, leave is given again
    time.sleep(decision.seconds + 0.1)
    assert isinstance(limiter.acquire(CAMPAIGN, 1), Permit)


def test_a_420_without_until_blocks_a_minute_and_an_absurd_until_at_most_an_hour(
    engine: Engine,
) -> None:
    limiter = RateLimiter(engine, skus_per_minute=1000, max_parallel=4)
    limiter.finish(_permit(limiter, 1), MarketAnswer(420))
    blocked = limiter.acquire(CAMPAIGN, 1)
    assert isinstance(blocked, Wait)
    assert 58 < blocked.seconds <= 60

    far = _db_now(engine) + timedelta(days=3)
    with engine.begin() as conn:  # the earlier block ends; the next 420 is the only one
        conn.execute(text("UPDATE campaign SET blocked_until = NULL"))
    limiter.finish(_permit(limiter, 1), MarketAnswer(420, until=far))
    capped = limiter.acquire(CAMPAIGN, 1)
    assert isinstance(capped, Wait)
    assert 3590 < capped.seconds <= 3600


def test_a_later_420_never_shortens_a_block(engine: Engine) -> None:
    limiter = RateLimiter(engine, skus_per_minute=1000, max_parallel=4)
    now = _db_now(engine)
    first, second = _permit(limiter, 1), _permit(limiter, 1)
    limiter.finish(first, MarketAnswer(420, until=now + timedelta(seconds=30)))
    limiter.finish(second, MarketAnswer(420, until=now + timedelta(seconds=5)))
    decision = limiter.acquire(CAMPAIGN, 1)
    assert isinstance(decision, Wait)
    assert decision.seconds > 20


def test_the_markets_remaining_raises_the_local_count_but_never_lowers_it(engine: Engine) -> None:
    # Given 10 SKUs sent, and the Market saying 60 of its 100 are used (other senders, say)
    limiter = RateLimiter(engine, skus_per_minute=100, max_parallel=4)
    limiter.finish(_permit(limiter, 10), MarketAnswer(200, limit=100, remaining=40))
    # Then the window counts the Market's 60
    assert _skus_in_window(limiter) == 60
    # And 50 more SKUs must wait for the window, while 40 still fit
    assert isinstance(limiter.acquire(CAMPAIGN, 50), Wait)
    permit = _permit(limiter, 40)
    # When the Market then reports fewer used than we counted, the count stays ours
    limiter.finish(permit, MarketAnswer(200, limit=100, remaining=90))
    assert _skus_in_window(limiter) == 100


def test_a_5xx_gives_its_skus_back_to_the_window(engine: Engine) -> None:
    limiter = RateLimiter(engine, skus_per_minute=100, max_parallel=4)
    limiter.finish(_permit(limiter, 70), MarketAnswer(503))
    assert _skus_in_window(limiter) == 0
    # The whole limit is free again: the Market did not count the refused request
    limiter.finish(_permit(limiter, 100), MarketAnswer(200))
    assert _skus_in_window(limiter) == 100


def test_a_request_without_answer_keeps_its_skus_counted(engine: Engine) -> None:
    # A timeout may have reached the Market, so its SKUs stay in the window
    limiter = RateLimiter(engine, skus_per_minute=100, max_parallel=4)
    limiter.finish(_permit(limiter, 70), MarketAnswer(0, failure="timeout"))
    assert _skus_in_window(limiter) == 70


def test_a_full_window_waits_until_the_oldest_request_leaves_it(engine: Engine) -> None:
    limiter = RateLimiter(engine, skus_per_minute=100, max_parallel=4)
    limiter.finish(_permit(limiter, 60), MarketAnswer(200))
    decision = limiter.acquire(CAMPAIGN, 50)
    assert isinstance(decision, Wait)
    assert decision.reason == "window"
    assert 59 < decision.seconds <= 61  # 60 s after the request ended, plus the arrival margin


def test_parallel_slots_are_taken_and_given_back(engine: Engine) -> None:
    limiter = RateLimiter(engine, skus_per_minute=1000, max_parallel=2)
    first, second = _permit(limiter, 1), _permit(limiter, 1)
    full = limiter.acquire(CAMPAIGN, 1)
    assert isinstance(full, Wait)
    assert full.reason == "parallel"
    limiter.finish(first, MarketAnswer(200))  # a finished request frees its slot
    third = _permit(limiter, 1)
    limiter.cancel(second)  # so does one never sent
    limiter.cancel(third)
    assert isinstance(limiter.acquire(CAMPAIGN, 1), Permit)


def test_concurrent_askers_never_get_more_slots_than_allowed(engine: Engine) -> None:
    # Given eight threads asking at once (each its own connection, as workers do)
    limiter = RateLimiter(engine, skus_per_minute=1000, max_parallel=3)
    start = threading.Barrier(8)
    decisions: list[Permit | Wait] = []
    lock = threading.Lock()

    def ask() -> None:
        start.wait()
        decision = limiter.acquire(CAMPAIGN, 1)
        with lock:
            decisions.append(decision)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then exactly three get leave; the campaign's row lock serializes them
    assert len(decisions) == 8
    assert sum(isinstance(d, Permit) for d in decisions) == 3
    assert {d.reason for d in decisions if isinstance(d, Wait)} == {"parallel"}


def test_campaigns_have_separate_limits(engine: Engine) -> None:
    other = CAMPAIGN + 1
    limiter = RateLimiter(engine, skus_per_minute=100, max_parallel=4)
    limiter.finish(_permit(limiter, 100), MarketAnswer(420))
    assert isinstance(limiter.acquire(CAMPAIGN, 1), Wait)
    assert isinstance(limiter.acquire(other, 100), Permit)


def test_a_planner_skips_a_campaign_whose_row_a_frozen_transaction_changed(engine: Engine) -> None:
    # A planner that locked the campaign's row and moved its turn (`drained_at`), then stopped
    # inside its transaction (a worker frozen or cut off there): the next planner must skip the
    # campaign at once. Waiting on it (for the lock timeout, 10 s) stalls every other campaign
    # that planner would have served.
    limiter = RateLimiter(engine, skus_per_minute=1000, max_parallel=4)
    with engine.begin() as conn:
        assert limiter.try_usage(conn, CAMPAIGN) is not None  # the row exists, as after a drain
    with engine.connect() as frozen:
        frozen.begin()
        assert limiter.try_usage(frozen, CAMPAIGN) is not None
        frozen.execute(
            text("UPDATE campaign SET drained_at = clock_timestamp() WHERE campaign_id = :c"),
            {"c": CAMPAIGN},
        )
        started = time.monotonic()
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '3s'"))
            assert limiter.try_usage(conn, CAMPAIGN) is None
        assert time.monotonic() - started < 1.0
        frozen.rollback()


def _claim(engine: Engine, claim_id: str, skus: int) -> None:
    """A live claim of the campaign, as the drain writes it (a push queued or under way)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO push_claim (claim_id, campaign_id, skus, lease_until) "
                "VALUES (:id, :c, :skus, clock_timestamp() + interval '1 minute')"
            ),
            {"id": claim_id, "c": CAMPAIGN, "skus": skus},
        )


def _pending(engine: Engine, n: int, prefix: str) -> None:
    put_changes(
        engine, [{"campaign_id": CAMPAIGN, "sku": f"{prefix}{i:05d}", "count": i} for i in range(n)]
    )


def test_a_read_takes_the_slot_a_steady_stream_leaves_free(engine: Engine) -> None:
    # Given one push in flight (its claim live) and a few keys pending behind it, two slots
    limiter = RateLimiter(engine, skus_per_minute=100_000, max_parallel=2)
    _claim(engine, "c1", 5)
    push = _permit(limiter, 5)
    _pending(engine, 5, "S")
    # Then a read takes the other slot: those keys go with the push's next claim
    read = limiter.acquire(CAMPAIGN, 500, READ)
    assert isinstance(read, Permit), read
    # And with both slots taken nothing more goes, of either kind
    assert isinstance(limiter.acquire(CAMPAIGN, 1), Wait)
    assert isinstance(limiter.acquire(CAMPAIGN, 500, READ), Wait)
    limiter.finish(push, MarketAnswer(200))
    limiter.finish(read, MarketAnswer(200))


def test_a_backlog_takes_every_slot_before_any_read(engine: Engine) -> None:
    # Given more full batches pending than slots (a backlog) and nothing in flight yet
    limiter = RateLimiter(engine, skus_per_minute=100_000, max_parallel=3)
    _pending(engine, 4 * SKUS_PER_REQUEST_MAX, "B")
    # Then a read waits for sending, though every slot is free
    waiting = limiter.acquire(CAMPAIGN, 500, READ)
    assert isinstance(waiting, Wait)
    assert waiting.reason == "sending first"
    # And pushes still get their slots
    assert isinstance(limiter.acquire(CAMPAIGN, SKUS_PER_REQUEST_MAX), Permit)
    # A part batch with no claim needs one slot; claimed, it needs its claim's slot only
    assert sending_needs(claims=0, pending=1) == 1
    assert sending_needs(claims=1, pending=1) == 1
    assert sending_needs(claims=1, pending=2 * SKUS_PER_REQUEST_MAX + 1) == 3


def test_reads_in_flight_and_sendings_needs_together_fit_the_slots(engine: Engine) -> None:
    # Given two slots, a read in flight and a part batch pending with no claim
    limiter = RateLimiter(engine, skus_per_minute=100_000, max_parallel=2)
    first = limiter.acquire(CAMPAIGN, 500, READ)
    assert isinstance(first, Permit)
    _pending(engine, 3, "P")
    # Then a second read would leave the pending keys no slot: it waits
    second = limiter.acquire(CAMPAIGN, 500, READ)
    assert isinstance(second, Wait)
    assert second.reason == "sending first"
    # And the push takes the slot
    assert isinstance(limiter.acquire(CAMPAIGN, 3), Permit)
    limiter.finish(first, MarketAnswer(200))


def test_a_v3_read_counts_one_request_against_its_business_read_limit(engine: Engine) -> None:
    # Given a business (route key minus its id) allowed two v3 reads a minute
    business = -901
    limiter = RateLimiter(engine, 100_000, 3, 100_000, 50, v3_read_requests_per_minute=2)
    for _ in range(2):  # 500 offers each, one request each
        permit = limiter.acquire(business, 500, READ, groups=[4001])
        assert isinstance(permit, Permit), permit
        limiter.finish(permit, MarketAnswer(200))
    # Then the third waits for the window, and a v2 campaign's reads are not touched
    third = limiter.acquire(business, 1, READ, groups=[4001])
    assert isinstance(third, Wait)
    assert third.reason == "window"
    assert isinstance(limiter.acquire(CAMPAIGN, 500, READ), Permit)
