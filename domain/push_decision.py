"""What a push does with one Market answer to one batch: a pure decision, carried out by the task.

200 acknowledges the batch. 400 holds the SKUs the answer names (a lone SKU is held even when it is
not named) and sends the rest again, or halves the batch when none is named. 420 is a Celery retry
once the block ends (the limiter holds the route until `-Until`), or, when that is more than
SHORT_WAIT_SECONDS away, the claim released to a later drain. 401/403/404 park the campaign. 5xx,
no answer and 3xx (a redirect is never followed, so it acknowledges nothing) are Celery retries with
backoff. Retries are counted by Celery (`attempt`) up to `max_retries`, 420s and 5xx together;
after that, and for any other status, the claim is released, and but for a 420 the campaign is
marked degraded. No retry is ever due at once: every countdown is above zero.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from domain.backoff import backoff_seconds
from domain.market_rules import answer_kind, skus_named

# A wait up to this long is a Celery retry after it; a longer one hands the claim back to a later
# drain, so that no message waits in a worker under a long ETA (and no pool process sleeps).
SHORT_WAIT_SECONDS = 3.0


class PushOutcome(StrEnum):
    """The kind of step a push takes after one Market answer."""

    ACKNOWLEDGE = "acknowledge"  # 2xx: the versions sent are delivered
    ISOLATE = "isolate"  # 400: hold `hold`, send each group of `resend` again
    PARK_CAMPAIGN = "park_campaign"  # 401/403/404: the campaign waits for a probe
    RETRY = "retry"  # 420 (short block), 5xx, 3xx or no answer: Celery retries after `countdown`
    RELEASE = "release"  # 420 blocking longer than SHORT_WAIT_SECONDS: a later drain sends
    GIVE_UP = "give_up"  # retries spent or an unexpected status: release (and `degrade`)


@dataclass(frozen=True, slots=True)
class PushDecision:
    """One decision: its kind and what the task needs to carry it out (unused fields empty)."""

    kind: PushOutcome
    # (sku, reason) for each SKU to hold out of the batch, in the batch's order.
    hold: tuple[tuple[str, str], ...] = ()
    # Groups of SKUs to send again, each in the batch's order; the task sends the last group first.
    resend: tuple[tuple[str, ...], ...] = ()
    # RETRY: seconds until the retry, always > 0; RELEASE: how long the route is blocked.
    countdown: float = 0.0
    reason: str = ""
    # GIVE_UP: the campaign shows as degraded (not after 420s: the Market only asked to wait).
    degrade: bool = False


def halves(skus: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The batch cut in two at len // 2: together they hold every SKU once, in order."""
    half = len(skus) // 2
    return tuple(skus[:half]), tuple(skus[half:])


# Which items of a batch a 400's messages name: (messages, item labels) -> {label: message}.
Namer = Callable[[list[str], Sequence[str]], dict[str, str]]


def by_sku(messages: list[str], skus: Sequence[str]) -> dict[str, str]:
    """The v2 namer: the batch's SKUs that the messages quote."""
    return skus_named(messages, set(skus))


def _isolate(
    messages: Sequence[str], skus: Sequence[str], reason: str, namer: Namer
) -> PushDecision:
    named = namer(list(messages), skus)
    if len(skus) == 1 and not named:
        named = {skus[0]: reason}  # a lone SKU refused is the culprit, named or not
    if not named:
        return PushDecision(PushOutcome.ISOLATE, resend=halves(skus), reason=reason)
    hold = tuple((sku, f"400: {named[sku]}") for sku in skus if sku in named)
    rest = tuple(sku for sku in skus if sku not in named)
    return PushDecision(
        PushOutcome.ISOLATE, hold=hold, resend=(rest,) if rest else (), reason=reason
    )


def wait_for_leave(
    blocked_seconds: float,
    *,
    attempt: int,
    max_retries: int,
    reason: str,
    rng: random.Random | None = None,
) -> PushDecision:
    """The step when the route is blocked for `blocked_seconds` by a 420 (its own answer's, or one
    another push met): a Celery retry when the block ends, at least a first backoff step from now
    so never at once; the claim released when the block is long; given up, without degrading,
    when retries are spent."""
    if blocked_seconds > SHORT_WAIT_SECONDS:
        return PushDecision(PushOutcome.RELEASE, countdown=blocked_seconds, reason=reason)
    if attempt >= max_retries:
        return PushDecision(PushOutcome.GIVE_UP, reason=reason)
    countdown = max(blocked_seconds, backoff_seconds(0, rng=rng))
    return PushDecision(PushOutcome.RETRY, countdown=countdown, reason=reason)


def decide(
    status: int,
    messages: Sequence[str],
    skus: Sequence[str],
    *,
    attempt: int,
    max_retries: int,
    reason: str,
    blocked_seconds: float = 0.0,
    rng: random.Random | None = None,
    namer: Namer = by_sku,
) -> PushDecision:
    """The step after the Market answered `status` (0 = no answer) to the non-empty batch `skus`.

    `messages` are the error messages of the answer's body, `reason` its short human text, `attempt`
    the 0-based retry count of this push (Celery's), `blocked_seconds` how long the route's block
    lasts after a 420 (the limiter's, from `-Until`); `rng` makes the retry countdown reproducible.
    `skus` are item labels: the SKUs for v2; for v3 a label per (campaign, sku), with a `namer`
    that reads the SKU and warehouse a message names (`domain.market_rules.items_named`).
    """
    kind = answer_kind(status)
    if kind == "ok":
        return PushDecision(PushOutcome.ACKNOWLEDGE)
    if kind == "refused":
        return _isolate(messages, skus, reason, namer)
    if kind == "rate_limited":
        return wait_for_leave(
            blocked_seconds, attempt=attempt, max_retries=max_retries, reason=reason, rng=rng
        )
    if kind == "parked":
        return PushDecision(PushOutcome.PARK_CAMPAIGN, reason=reason)
    if kind == "retry" and attempt < max_retries:
        return PushDecision(
            PushOutcome.RETRY, countdown=backoff_seconds(attempt, rng=rng), reason=reason
        )
    return PushDecision(PushOutcome.GIVE_UP, reason=reason, degrade=True)
