"""Claims on the outbox against a real PostgreSQL, called directly (no worker, no Market)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from domain.market_payload import updated_at_to_send
from tests.integration.drain_support import put_changes
from worker.claims import Claim, Claims
from worker.rate_limiter import RateLimiter

CAMPAIGN = 51


def _claims(engine: Engine, lease_seconds: float = 60.0, limit: int = 100_000) -> Claims:
    return Claims(engine, RateLimiter(engine, limit, max_parallel=4), lease_seconds, 20 * 3600.0)


def _put(engine: Engine, **counts: int) -> None:
    put_changes(
        engine, [{"campaign_id": CAMPAIGN, "sku": s, "count": c} for s, c in counts.items()]
    )


def _claim(box: Claims) -> list[Claim]:
    return box.claim(CAMPAIGN, probe_interval=60.0)


def _skus(box: Claims, claim: Claim) -> list[str]:
    return [s.sku for s in box.read(CAMPAIGN, claim.claim_id)]


def test_claims_take_pending_keys_in_batches_oldest_change_first(engine: Engine) -> None:
    # Given 4,100 pending keys whose changes are oldest for the highest SKU names
    skus = [f"k{n:05d}" for n in range(4100)]
    put_changes(engine, [{"campaign_id": CAMPAIGN, "sku": s, "count": 1} for s in skus])
    with engine.begin() as conn:
        conn.execute(
            text("""
                UPDATE stock SET changed_at = timestamptz '2026-01-01 00:00:00+00'
                    + make_interval(secs => (5000 - substr(sku, 2)::int) / 1000.0)
            """)
        )
    oldest_first = list(reversed(skus))
    # When the drain claims
    claims = _claim(_claims(engine))
    # Then the keys come in Market-sized batches, each a claim, the oldest changes first
    assert [c.skus for c in claims] == [2000, 2000, 100]
    assert [_skus(_claims(engine), c) for c in claims] == [
        oldest_first[:2000],
        oldest_first[2000:4000],
        oldest_first[4000:],
    ]


def test_a_claim_stays_within_the_campaigns_rate_budget(engine: Engine) -> None:
    _put(engine, a=1, b=2, c=3, d=4, e=5)
    box = _claims(engine, limit=3)
    claims = _claim(box)
    assert [c.skus for c in claims] == [3]
    # The claimed SKUs count against the budget until their request is done
    assert _claim(box) == []


def test_a_live_claims_keys_are_not_claimed_twice(engine: Engine) -> None:
    box = _claims(engine)
    _put(engine, a=1, b=2, c=3)
    (first,) = _claim(box)
    assert sorted(_skus(box, first)) == ["a", "b", "c"]
    # A second drain finds nothing while the claim lives, even when a held key changes again
    _put(engine, b=20)
    assert _claim(box) == []
    # And a key changed meanwhile goes to a claim of its own
    _put(engine, new=7)
    (second,) = _claim(box)
    assert _skus(box, second) == ["new"]


def test_a_claim_whose_lease_ran_out_is_taken_over(engine: Engine) -> None:
    # Given a claim whose worker stopped renewing it
    box = _claims(engine, lease_seconds=1.0)
    _put(engine, a=1, b=2)
    (dead,) = _claim(box)
    assert box.renew(dead.claim_id)  # alive until its lease ends
    time.sleep(1.3)
    # Then it cannot be renewed, and the next drain takes its keys over
    assert not box.renew(dead.claim_id)
    (taker,) = _claim(box)
    assert sorted(_skus(box, taker)) == ["a", "b"]
    # And the dead claim holds nothing any more: it can never send those keys
    assert box.read(CAMPAIGN, dead.claim_id) == []


def test_acknowledging_the_sent_version_keeps_a_newer_change_pending(engine: Engine) -> None:
    # Given a claim read (a=1, b=2) and sent
    box = _claims(engine)
    _put(engine, a=1, b=2)
    (claim,) = _claim(box)
    sent = box.read(CAMPAIGN, claim.claim_id)
    # When a changes while the request is on its way, and the Market then acknowledges
    _put(engine, a=10)
    box.acknowledge(CAMPAIGN, claim.claim_id, sent)
    box.release(CAMPAIGN, claim.claim_id)
    # Then only a is pending, at its newer value; b is delivered
    (again,) = _claim(box)
    assert [(s.sku, s.value) for s in box.read(CAMPAIGN, again.claim_id)] == [("a", 10)]


def test_the_acknowledged_updated_at_is_read_with_the_key_and_the_next_send_starts_after_it(
    engine: Engine,
) -> None:
    # Given a key sent at a moment a clock read later than the next send's
    box = _claims(engine)
    _put(engine, a=1)
    (claim,) = _claim(box)
    (sent,) = box.read(CAMPAIGN, claim.claim_id)
    assert sent.sent_updated_at is None  # never sent yet
    later = datetime.now(UTC) + timedelta(seconds=30)
    box.acknowledge(CAMPAIGN, claim.claim_id, [sent], later)
    box.release(CAMPAIGN, claim.claim_id)
    # When the key changes and is read for its next send
    _put(engine, a=2)
    (again,) = _claim(box)
    (pending,) = box.read(CAMPAIGN, again.claim_id)
    # Then it carries the updatedAt sent, and the next one is not before it
    assert pending.sent_updated_at == updated_at_to_send(sent, later)
    assert updated_at_to_send(pending, datetime.now(UTC)) >= pending.sent_updated_at
    # And a late acknowledgement of the older version records nothing
    box.acknowledge(CAMPAIGN, again.claim_id, [pending], later + timedelta(seconds=5))
    box.acknowledge(CAMPAIGN, again.claim_id, [sent], later + timedelta(seconds=60))
    with engine.connect() as conn:
        recorded = conn.execute(text("SELECT sent_updated_at FROM stock WHERE sku = 'a'")).scalar()
    assert recorded == updated_at_to_send(pending, later + timedelta(seconds=5))


def test_release_gives_the_keys_back_to_the_next_drain(engine: Engine) -> None:
    box = _claims(engine)
    _put(engine, a=1, b=2)
    (claim,) = _claim(box)
    box.release(CAMPAIGN, claim.claim_id)
    assert not box.renew(claim.claim_id)
    (again,) = _claim(box)
    assert sorted(_skus(box, again)) == ["a", "b"]


def test_a_parked_sku_waits_for_its_next_change(engine: Engine) -> None:
    box = _claims(engine)
    _put(engine, bad=1)
    (claim,) = _claim(box)
    (sent,) = box.read(CAMPAIGN, claim.claim_id)
    box.hold_skus(CAMPAIGN, claim.claim_id, [(sent, "400: bad")])
    box.release(CAMPAIGN, claim.claim_id)
    assert _claim(box) == []
    _put(engine, bad=2)
    (again,) = _claim(box)
    assert _skus(box, again) == ["bad"]
