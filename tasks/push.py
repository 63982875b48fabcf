"""`stocks.push`: send one claimed batch to the Market and record what the Market said.

What to do with each answer is `domain.push_decision.decide`; this task carries it out. A 420 and
a 5xx (or no answer) are Celery retries (`self.retry`, a countdown above zero: the end of the
420's block, or the backoff; `max_retries` from STOCKSYNC_PUSH_MAX_RETRIES), the claim's lease
renewed past the countdown first. A wait longer than SHORT_WAIT_SECONDS releases the claim to a
later drain instead of holding an ETA message; so do spent retries (counted and logged). The
limiter's own pacing (a full window, a busy slot) is slept up to SHORT_WAIT_SECONDS.

`campaign_id` is the claim's route key (`domain.route`): a v2 campaign, or minus a v3 business,
whose batch goes as one v3 request with each item's campaign's partner warehouse. Parking, 420
blocks, retries and degrading apply to the route: for v3, the business.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, assert_never

from celery import Task

from domain.market_payload import PendingStock, stocks_body, v3_stocks_body
from domain.market_rules import items_named
from domain.push_decision import (
    SHORT_WAIT_SECONDS,
    Namer,
    PushDecision,
    PushOutcome,
    by_sku,
    decide,
    wait_for_leave,
)
from domain.route import Method, Route
from worker import counters, runtime
from worker.app import app
from worker.claims import Claim, Claims
from worker.logs import log_event
from worker.market_client import MarketAnswer
from worker.rate_limiter import Permit, Wait
from worker.settings import get_settings

log = logging.getLogger("stocksync.push")

# The lease renewed before a PUT outlasts its total deadline by this much, and before a retry
# its countdown.
LEASE_MARGIN = 5.0
# updatedAt stays this far behind the database's clock: the Market's clock may lag it a little.
CLOCK_MARGIN = timedelta(seconds=1)


def enqueue(claims: list[Claim]) -> None:
    """One push task per claimed batch."""
    for claim in claims:
        push.apply_async(args=(claim.campaign_id, claim.claim_id, claim.skus))


def _count(name: str, campaign_id: int, label: str = "") -> None:
    """Counts one retry (stocksync_push_retries_total) or give-up of a push."""
    with runtime.engine().begin() as conn:
        counters.add(conn, [((name, campaign_id, label), 1)])


def _send(
    box: Claims, campaign_id: int, claim_id: str, batch: list[PendingStock], attempt: int
) -> tuple[MarketAnswer, datetime] | Wait | None:
    """One request through the limiter: the answer and the moment its body was built at; the
    limiter's wait when it is a 420's block or long (the task retries or releases); or None when
    the claim's lease ran out: its keys may be another push's by now, and the values read before
    could overwrite a newer value at the Market. The wait for the leave (from the first ask) is
    logged (`limiter_wait_ms`) and counted (stocksync_limiter_wait_seconds)."""
    asked = time.monotonic()
    while True:
        decision = runtime.limiter().acquire(campaign_id, len(batch))
        if isinstance(decision, Permit):
            break
        if decision.reason == "420" or decision.seconds > SHORT_WAIT_SECONDS:
            return decision
        time.sleep(decision.seconds)
        if not box.renew(claim_id):  # the keys stay this push's while it waits for room
            return None
    waited = time.monotonic() - asked
    # The lease must outlast the request (its total deadline, STOCKSYNC_MARKET_TIMEOUT_SECONDS):
    # no other push may take these keys while this request can still arrive.
    # updatedAt comes from the database's clock, read in this same round trip: a worker whose own
    # clock runs ahead would be refused "in the future", one behind would send times that go back.
    now = box.renew_for_sending(
        claim_id, at_least=get_settings().market_timeout_seconds + LEASE_MARGIN
    )
    if now is None:
        runtime.limiter().cancel(decision)
        return None
    started = time.monotonic()
    route = Route.of_key(campaign_id)
    sent_at = now - CLOCK_MARGIN
    client = runtime.market_client()
    if route.method is Method.V3:
        warehouse_of = runtime.routing().warehouse_of
        body = v3_stocks_body([(s, warehouse_of(s.group_id)) for s in batch], sent_at)
        answer = client.update_v3_stocks(route.target, body)
    else:
        answer = client.put_stocks(campaign_id, stocks_body(batch, sent_at))
    runtime.limiter().finish(decision, answer, waited)
    log_event(
        log,
        logging.INFO,
        "push",
        **{"campaign" if route.method is Method.V2 else "business": route.target},
        skus=len(batch),
        status=answer.status,
        duration_ms=round((time.monotonic() - started) * 1000),
        attempt=attempt,
        limiter_wait_ms=round(waited * 1000),
        method=route.method.value,  # last: the v2 line reads as before
    )
    if not box.renew(claim_id):
        # The lease ran out before the answer came (a paused or stalled process): another push
        # may have sent a newer value that this older one then overwrote. The keys go pending
        # again, whatever the answer, so the current value is sent last.
        box.send_again(campaign_id, claim_id, batch)
        log_event(
            log, logging.WARNING, "lease_lost_in_flight", campaign=campaign_id, skus=len(batch)
        )
        return None
    return answer, sent_at


def _labels(route_key: int, batch: list[PendingStock]) -> tuple[dict[str, PendingStock], Namer]:
    """The batch's items by label, and how a 400 names them: by SKU for v2; for v3 by
    (campaign, sku), a message naming the SKU and the warehouse (`items_named`)."""
    if Route.of_key(route_key).method is Method.V2:
        return {s.sku: s for s in batch}, by_sku
    warehouse_of = runtime.routing().warehouse_of
    labels = {f"{s.group_id}/{s.sku}": s for s in batch}
    items = {label: (s.sku, warehouse_of(s.group_id)) for label, s in labels.items()}
    return labels, lambda messages, _: items_named(messages, items)


def _unusable(box: Claims, campaign_id: int, claim_id: str) -> str | None:
    """Why the claim is not to be sent, if so: its lease ran out, or its route is no longer
    configured (claimed before a move between v2 and v3: the keys go by their new route)."""
    if not box.renew(claim_id):
        return "lease lost"
    if not runtime.routing().is_current(Route.of_key(campaign_id)):
        box.release(campaign_id, claim_id)
        return "route changed"
    return None


def _campaign_warning(event: str, campaign_id: int, reason: str) -> None:
    """A campaign's new state (`campaign_parked`, `campaign_degraded`) in the log."""
    log_event(log, logging.WARNING, event, campaign=campaign_id, reason=reason)


def _decision(
    box: Claims, campaign_id: int, claim_id: str, batch: list[PendingStock], attempt: int
) -> tuple[PushDecision, int, datetime | None, dict[str, PendingStock]] | None:
    """One send and its decision, with the status it follows, the moment the body was built at
    and the batch's items by label; None when the claim's lease ran out."""
    max_retries = get_settings().push_max_retries
    sent = _send(box, campaign_id, claim_id, batch, attempt)
    if sent is None:
        return None
    if isinstance(sent, Wait):
        # Blocked by a 420 another push met, or a long wait: the same rule as a 420's answer.
        reason = f"waiting for the limiter ({sent.reason})"
        leave = wait_for_leave(
            sent.seconds, attempt=attempt, max_retries=max_retries, reason=reason
        )
        return leave, 420, None, {}
    answer, sent_at = sent
    labels, namer = _labels(campaign_id, batch)
    decision = decide(
        answer.status,
        [e.message for e in answer.errors],
        list(labels),
        attempt=attempt,
        max_retries=max_retries,
        reason=answer.reason(),
        # After a 420 the limiter has recorded the route's block (from -Until): its length.
        blocked_seconds=runtime.campaign_health().blocked_seconds(campaign_id)
        if answer.status == 420
        else 0.0,
        namer=namer,
    )
    return decision, answer.status, sent_at, labels


def _stop(
    task: Task, box: Claims, campaign_id: int, claim_id: str, *, decision: PushDecision, status: int
) -> dict[str, Any]:
    """Carries out a decision that ends this run: parking, a Celery retry (raised: the claim's
    lease renewed past its countdown first, so the keys stay this push's while it waits),
    releasing to a later drain, giving up (counted, logged, degraded but after 420s)."""
    attempt = task.request.retries
    match decision.kind:
        case PushOutcome.PARK_CAMPAIGN:
            runtime.campaign_health().park(
                campaign_id, decision.reason, get_settings().probe_interval_seconds
            )
            box.release(campaign_id, claim_id)
            _campaign_warning("campaign_parked", campaign_id, decision.reason)
            return {"outcome": "campaign parked"}
        case PushOutcome.RETRY:
            if not box.renew(claim_id, at_least=decision.countdown + LEASE_MARGIN):
                return {"outcome": "lease lost"}
            _count(counters.PUSH_RETRIES, campaign_id)
            raise task.retry(
                countdown=decision.countdown, max_retries=get_settings().push_max_retries
            )
        case PushOutcome.RELEASE:
            box.release(campaign_id, claim_id)
            return {"outcome": f"released: wait {decision.countdown:.1f}s"}
        case PushOutcome.GIVE_UP:
            box.release(campaign_id, claim_id)  # the keys stay pending: nothing is lost
            _count(counters.PUSH_GIVEN_UP, campaign_id, str(status))
            log_event(
                log,
                logging.WARNING,
                "push_given_up",
                campaign=campaign_id,
                status=status,
                retries=attempt,
                reason=decision.reason,
            )
            if decision.degrade:
                runtime.campaign_health().degrade(campaign_id, decision.reason)
                _campaign_warning("campaign_degraded", campaign_id, decision.reason)
            return {"outcome": "released after retries"}
        case PushOutcome.ACKNOWLEDGE | PushOutcome.ISOLATE:
            raise ValueError(f"{decision.kind} does not end a push")
        case _ as unreachable:
            assert_never(unreachable)


@app.task(name="stocks.push", bind=True, acks_late=True, reject_on_worker_lost=True)
def push(self: Task, campaign_id: int, claim_id: str, skus: int) -> dict[str, Any]:
    """Delivers the claim's keys at their current values; never drops one."""
    settings = get_settings()
    box = runtime.claims()
    unusable = _unusable(box, campaign_id, claim_id)
    if unusable is not None:
        return {"outcome": unusable, "skus": skus}
    work = [box.read(campaign_id, claim_id)]
    delivered = 0
    while work:
        batch = work.pop()
        if not batch:
            continue
        step = _decision(box, campaign_id, claim_id, batch, self.request.retries)
        if step is None:
            return {"outcome": "lease lost", "delivered": delivered}
        decision, status, sent_at, labels = step
        match decision.kind:
            case PushOutcome.ACKNOWLEDGE:
                box.acknowledge(campaign_id, claim_id, batch, sent_at)
                delivered += len(batch)
            case PushOutcome.ISOLATE:
                if decision.hold:
                    box.hold_skus(
                        campaign_id, claim_id, [(labels[item], why) for item, why in decision.hold]
                    )
                work.extend([labels[item] for item in group] for group in decision.resend)
            case (
                PushOutcome.PARK_CAMPAIGN
                | PushOutcome.RETRY
                | PushOutcome.RELEASE
                | PushOutcome.GIVE_UP
            ):
                ended = _stop(self, box, campaign_id, claim_id, decision=decision, status=status)
                return {**ended, "delivered": delivered}
            case _ as unreachable:
                assert_never(unreachable)
    box.release(campaign_id, claim_id)
    enqueue(box.claim(campaign_id, settings.probe_interval_seconds))
    return {"outcome": "done", "delivered": delivered}
