"""The push decision: every Market answer maps to one step, without I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.push_decision import (
    SHORT_WAIT_SECONDS,
    PushDecision,
    PushOutcome,
    decide,
    halves,
    wait_for_leave,
)

BATCH = ["a", "b", "c", "d", "e"]
REASON = "HTTP 400: BAD_REQUEST: no details"

unique_skus = st.lists(
    st.text(alphabet="abcdefxyz0123456789-", min_size=1, max_size=8),
    min_size=1,
    max_size=60,
    unique=True,
)


def test_a_2xx_acknowledges_the_batch() -> None:
    for status in (200, 204, 299):
        assert decide(status, [], BATCH, attempt=0, max_retries=3, reason="") == PushDecision(
            PushOutcome.ACKNOWLEDGE
        )


def test_a_400_naming_skus_holds_them_with_the_markets_message_and_resends_the_rest() -> None:
    messages = ["Stock for 'b' is invalid", "Stock for 'd' and 'zz' too"]

    decision = decide(400, messages, BATCH, attempt=0, max_retries=3, reason=REASON)

    assert decision.kind is PushOutcome.ISOLATE
    assert decision.hold == (
        ("b", "400: Stock for 'b' is invalid"),
        ("d", "400: Stock for 'd' and 'zz' too"),
    )
    assert decision.resend == (("a", "c", "e"),)


def test_a_400_naming_every_sku_resends_nothing() -> None:
    decision = decide(400, ["'a' 'b'"], ["b", "a"], attempt=0, max_retries=3, reason=REASON)

    assert decision.hold == (("b", "400: 'a' 'b'"), ("a", "400: 'a' 'b'"))
    assert decision.resend == ()


def test_a_400_naming_no_sku_halves_the_batch() -> None:
    decision = decide(
        400, ["Stock for 'unknown' is invalid"], BATCH, attempt=0, max_retries=3, reason=REASON
    )

    assert decision.kind is PushOutcome.ISOLATE
    assert decision.hold == ()
    assert decision.resend == (("a", "b"), ("c", "d", "e"))


def test_a_400_to_a_lone_unnamed_sku_holds_it_with_the_answers_reason() -> None:
    decision = decide(400, [], ["only"], attempt=0, max_retries=3, reason=REASON)

    assert decision.hold == (("only", f"400: {REASON}"),)
    assert decision.resend == ()


def test_a_420_with_a_short_block_is_a_retry_when_the_block_ends() -> None:
    decision = decide(
        420, [], BATCH, attempt=0, max_retries=3, reason="HTTP 420", blocked_seconds=2.5
    )

    assert decision == PushDecision(PushOutcome.RETRY, countdown=2.5, reason="HTTP 420")


@pytest.mark.parametrize("blocked", [0.0, 0.01, -1.0])
def test_a_420_whose_block_is_over_still_retries_after_a_pause_never_at_once(
    blocked: float,
) -> None:
    decision = decide(420, [], BATCH, attempt=0, max_retries=3, reason="", blocked_seconds=blocked)

    assert decision.kind is PushOutcome.RETRY
    assert 0.25 <= decision.countdown <= 0.5  # a first backoff step


def test_a_420_with_a_long_block_releases_the_claim() -> None:
    decision = decide(
        420,
        [],
        BATCH,
        attempt=0,
        max_retries=3,
        reason="HTTP 420",
        blocked_seconds=SHORT_WAIT_SECONDS + 0.1,
    )

    assert decision == PushDecision(
        PushOutcome.RELEASE, countdown=SHORT_WAIT_SECONDS + 0.1, reason="HTTP 420"
    )


def test_a_420_after_the_last_retry_gives_up_without_degrading() -> None:
    decision = decide(420, [], BATCH, attempt=3, max_retries=3, reason="HTTP 420")

    assert decision == PushDecision(PushOutcome.GIVE_UP, reason="HTTP 420", degrade=False)


def test_a_limiter_wait_follows_the_420_rule() -> None:
    assert wait_for_leave(1.0, attempt=0, max_retries=3, reason="r").kind is PushOutcome.RETRY
    assert wait_for_leave(30.0, attempt=0, max_retries=3, reason="r").kind is PushOutcome.RELEASE
    assert wait_for_leave(1.0, attempt=3, max_retries=3, reason="r").kind is PushOutcome.GIVE_UP


@pytest.mark.parametrize("status", [401, 403, 404])
def test_an_auth_or_missing_campaign_answer_parks_the_campaign_with_the_reason(
    status: int,
) -> None:
    decision = decide(
        status, [], BATCH, attempt=0, max_retries=3, reason=f"HTTP {status}: no details"
    )

    assert decision == PushDecision(PushOutcome.PARK_CAMPAIGN, reason=f"HTTP {status}: no details")


@pytest.mark.parametrize("status", [0, 500, 503, 599])
def test_a_5xx_or_no_answer_retries_after_a_backoff_while_retries_are_left(status: int) -> None:
    decision = decide(
        status, [], BATCH, attempt=2, max_retries=3, reason="timeout", rng=random.Random(7)
    )

    assert decision.kind is PushOutcome.RETRY
    assert 1.0 <= decision.countdown <= 2.0  # attempt 2: step 0.5 * 2**2, at least half of it
    assert decision.reason == "timeout"


def test_the_retry_countdown_follows_the_given_random_source() -> None:
    first = decide(503, [], BATCH, attempt=1, max_retries=3, reason="", rng=random.Random(1))
    again = decide(503, [], BATCH, attempt=1, max_retries=3, reason="", rng=random.Random(1))

    assert first.countdown == again.countdown > 0


@pytest.mark.parametrize("status", [0, 502])
def test_a_5xx_after_the_last_retry_gives_up(status: int) -> None:
    decision = decide(status, [], BATCH, attempt=3, max_retries=3, reason="HTTP 502: no details")

    assert decision == PushDecision(
        PushOutcome.GIVE_UP, reason="HTTP 502: no details", degrade=True
    )


@pytest.mark.parametrize("status", [300, 301, 302, 307, 308, 399])
def test_a_redirect_is_retried_like_a_5xx_and_never_acknowledged(status: int) -> None:
    decision = decide(
        status, [], BATCH, attempt=2, max_retries=3, reason="HTTP 302", rng=random.Random(7)
    )

    assert decision.kind is PushOutcome.RETRY
    assert 1.0 <= decision.countdown <= 2.0
    assert decision.reason == "HTTP 302"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_after_the_last_retry_gives_up(status: int) -> None:
    decision = decide(status, [], BATCH, attempt=3, max_retries=3, reason="HTTP 307")

    assert decision == PushDecision(PushOutcome.GIVE_UP, reason="HTTP 307", degrade=True)


@pytest.mark.parametrize("status", [409, 429, 100, 418])
def test_an_unexpected_status_gives_up_at_once(status: int) -> None:
    assert (
        decide(status, [], BATCH, attempt=0, max_retries=3, reason="odd").kind
        is PushOutcome.GIVE_UP
    )


@given(unique_skus)
def test_halving_covers_the_batch_exactly_once_in_order(skus: list[str]) -> None:
    first, second = halves(skus)

    assert list(first + second) == skus
    assert len(second) - len(first) in (0, 1)


@given(unique_skus)
def test_an_unnamed_400_isolates_by_halves_that_never_repeat_the_batch(skus: list[str]) -> None:
    decision = decide(400, ["nothing quoted here"], skus, attempt=0, max_retries=3, reason=REASON)

    sent_again = [sku for group in decision.resend for sku in group]
    held = [sku for sku, _ in decision.hold]
    assert sorted(sent_again + held) == sorted(skus)
    # Each step makes progress: a group sent again is smaller than the batch, so isolation ends.
    assert all(len(group) < len(skus) for group in decision.resend)
    assert all(group for group in decision.resend)


@given(unique_skus, st.data())
def test_a_named_400_holds_exactly_the_named_skus_and_resends_the_others(
    skus: list[str], data: st.DataObject
) -> None:
    named = data.draw(st.lists(st.sampled_from(skus), unique=True, min_size=1))
    messages = [f"Stock for '{sku}' is invalid" for sku in named]

    decision = decide(400, messages, skus, attempt=0, max_retries=3, reason=REASON)

    assert {sku for sku, _ in decision.hold} == set(named)
    assert [sku for sku, _ in decision.hold] == [s for s in skus if s in named]
    assert decision.resend == (
        () if set(named) == set(skus) else (tuple(s for s in skus if s not in named),)
    )
