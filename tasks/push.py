"""`stocks.push`: send one claimed batch to the Market and record what the Market said.

What to do with each answer is `domain.push_decision.decide`; this task carries it out. A wait
for the limiter (a 420's -Until, a full window) up to SHORT_WAIT_SECONDS is slept here; a longer
one releases the claim to a later drain. 5xx and no answer retry through Celery with backoff.

`campaign_id` is the claim's route key (`domain.route`): a v2 campaign, or minus a v3 business,
whose batch goes as one v3 request with each item's campaign's partner warehouse. Parking, 420
blocks and degrading apply to the route: for v3, the business.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, assert_never

from celery import Task

from domain.market_payload import PendingStock, stocks_body, v3_stocks_body
from domain.market_rules import items_named
from domain.push_decision import Namer, PushOutcome, by_sku, decide
from domain.route import Method, Route
from worker import counters, runtime
from worker.app import app
from worker.claims import Claim, Claims
from worker.logs import log_event
from worker.market_client import MarketAnswer
from worker.rate_limiter import Permit
from worker.settings import get_settings

log = logging.getLogger("stocksync.push")

# A wait up to this long is slept in the task; anything longer hands the keys back to the drain,
# so no message waits in a worker under a countdown.
SHORT_WAIT_SECONDS = 3.0
# The lease renewed before a PUT outlasts its total deadline by this much.
LEASE_MARGIN = 5.0
# updatedAt stays this far behind the database's clock: the Market's clock may lag it a little.
CLOCK_MARGIN = timedelta(seconds=1)


def enqueue(claims: list[Claim]) -> None:
    """One push task per claimed batch."""
    for claim in claims:
        push.apply_async(args=(claim.campaign_id, claim.claim_id, claim.skus))


def count_retry(campaign_id: int) -> None:
    """Counts one Celery retry of a push (stocksync_push_retries_total)."""
    with runtime.engine().begin() as conn:
        counters.add(conn, [((counters.PUSH_RETRIES, campaign_id, ""), 1)])


def _send(
    box: Claims, campaign_id: int, claim_id: str, batch: list[PendingStock], attempt: int
) -> tuple[MarketAnswer, datetime] | float | None:
    """One request through the limiter: the answer and the moment its body was built at, the
    seconds to wait when that is long, or
    None when the claim's lease ran out: its keys may be another push's by now, and the values
    read before could overwrite a newer value at the Market."""
    while True:
        decision = runtime.limiter().acquire(campaign_id, len(batch))
        if isinstance(decision, Permit):
            break
        if decision.seconds > SHORT_WAIT_SECONDS:
            return decision.seconds
        time.sleep(decision.seconds)
        if not box.renew(claim_id):  # the keys stay this push's while it waits for room
            return None
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
    runtime.limiter().finish(decision, answer)
    log_event(
        log,
        logging.INFO,
        "push",
        **{"campaign" if route.method is Method.V2 else "business": route.target},
        skus=len(batch),
        status=answer.status,
        duration_ms=round((time.monotonic() - started) * 1000),
        attempt=attempt,
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
        sent = _send(box, campaign_id, claim_id, batch, self.request.retries)
        if sent is None:
            return {"outcome": "lease lost", "delivered": delivered}
        if isinstance(sent, float):
            box.release(campaign_id, claim_id)
            return {"outcome": f"released: wait {sent:.1f}s", "delivered": delivered}
        answer, sent_at = sent
        labels, namer = _labels(campaign_id, batch)
        decision = decide(
            answer.status,
            [e.message for e in answer.errors],
            list(labels),
            attempt=self.request.retries,
            max_retries=settings.push_max_retries,
            reason=answer.reason(),
            namer=namer,
        )
        match decision.kind:
            case PushOutcome.ACKNOWLEDGE:
                box.acknowledge(campaign_id, claim_id, batch, sent_at)
                delivered += len(batch)
            case PushOutcome.ISOLATE | PushOutcome.WAIT:
                # On WAIT the limiter now holds the campaign until -Until; the batch goes again.
                if decision.hold:
                    box.hold_skus(
                        campaign_id, claim_id, [(labels[item], why) for item, why in decision.hold]
                    )
                work.extend([labels[item] for item in group] for group in decision.resend)
            case PushOutcome.PARK_CAMPAIGN:
                runtime.campaign_health().park(
                    campaign_id, decision.reason, settings.probe_interval_seconds
                )
                box.release(campaign_id, claim_id)
                _campaign_warning("campaign_parked", campaign_id, decision.reason)
                return {"outcome": "campaign parked", "delivered": delivered}
            case PushOutcome.RETRY:
                box.renew(claim_id)
                count_retry(campaign_id)
                raise self.retry(countdown=decision.countdown)
            case PushOutcome.GIVE_UP:
                box.release(campaign_id, claim_id)
                runtime.campaign_health().degrade(campaign_id, decision.reason)
                _campaign_warning("campaign_degraded", campaign_id, decision.reason)
                return {"outcome": "released after retries", "delivered": delivered}
            case _ as unreachable:
                assert_never(unreachable)
    box.release(campaign_id, claim_id)
    enqueue(box.claim(campaign_id, settings.probe_interval_seconds))
    return {"outcome": "done", "delivered": delivered}
