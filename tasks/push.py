"""`stocks.push`: send one claimed batch to the Market and record what the Market said.

200 acknowledges the versions sent. 400 isolates the rejected SKUs (named in the answer, else by
halving the batch) and holds them; the rest still goes. 401/403/404 park the campaign. A 420
blocks the campaign in the rate limiter until `-Until`: the task sleeps a short wait (keeping its
lease) and sends again, and releases the claim to a later drain when the wait is longer. 5xx,
timeouts and broken connections retry through Celery with backoff; after the last retry the
claim is released and the campaign marked degraded.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from celery import Task

from domain.backoff import backoff_seconds
from domain.market_payload import PendingStock, stocks_body
from domain.market_rules import answer_kind, skus_named
from worker import runtime
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


def enqueue(claimed: list[Claim]) -> None:
    """One push task per claimed batch."""
    for claim in claimed:
        push.apply_async(args=(claim.campaign_id, claim.claim_id, claim.skus))


def _send(
    box: Claims, campaign_id: int, claim_id: str, batch: list[PendingStock], attempt: int
) -> MarketAnswer | float | None:
    """One request through the limiter: the answer, the seconds to wait when that is long, or
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
    # The lease must outlast the request (connect and read timeouts): no other push may take
    # these keys while this request can still arrive.
    if not box.renew(claim_id, at_least=2 * get_settings().market_timeout_seconds + 5):
        runtime.limiter().cancel(decision)
        return None
    started = time.monotonic()
    answer = runtime.market_client().put_stocks(campaign_id, stocks_body(batch, datetime.now(UTC)))
    runtime.limiter().finish(decision, answer)
    log_event(
        log,
        logging.INFO,
        "push",
        campaign=campaign_id,
        skus=len(batch),
        status=answer.status,
        duration_ms=round((time.monotonic() - started) * 1000),
        attempt=attempt,
    )
    return answer


def _split_refused(
    box: Claims, campaign_id: int, claim_id: str, batch: list[PendingStock], answer: MarketAnswer
) -> list[list[PendingStock]]:
    """Holds the SKUs a 400 names; what is left is sent again, halved when none was named."""
    named = skus_named([e.message for e in answer.errors], {s.sku for s in batch})
    if len(batch) == 1 and not named:
        named = {batch[0].sku: answer.reason()}
    if named:
        box.hold_skus(
            campaign_id, claim_id, [(s, f"400: {named[s.sku]}") for s in batch if s.sku in named]
        )
        rest = [s for s in batch if s.sku not in named]
        return [rest] if rest else []
    half = len(batch) // 2
    return [batch[:half], batch[half:]]


@app.task(name="stocks.push", bind=True, acks_late=True, reject_on_worker_lost=True)
def push(self: Task, campaign_id: int, claim_id: str, skus: int) -> dict[str, Any]:
    """Delivers the claim's keys at their current values; never drops one."""
    settings = get_settings()
    box = runtime.claims()
    if not box.renew(claim_id):
        return {"outcome": "lease lost", "skus": skus}
    work = [box.read(campaign_id, claim_id)]
    delivered = 0
    while work:
        batch = work.pop()
        if not batch:
            continue
        answer = _send(box, campaign_id, claim_id, batch, self.request.retries)
        if answer is None:
            return {"outcome": "lease lost", "delivered": delivered}
        if isinstance(answer, float):
            box.release(campaign_id, claim_id)
            return {"outcome": f"released: wait {answer:.1f}s", "delivered": delivered}
        kind = answer_kind(answer.status)
        if kind == "ok":
            box.acknowledge(campaign_id, claim_id, batch)
            delivered += len(batch)
        elif kind == "refused":
            work.extend(_split_refused(box, campaign_id, claim_id, batch, answer))
        elif kind == "rate_limited":
            work.append(batch)  # the limiter now holds the campaign until -Until
        elif kind == "parked":
            runtime.campaign_health().park(
                campaign_id, answer.reason(), settings.probe_interval_seconds
            )
            box.release(campaign_id, claim_id)
            log_event(
                log,
                logging.WARNING,
                "campaign_parked",
                campaign=campaign_id,
                reason=answer.reason(),
            )
            return {"outcome": "campaign parked", "delivered": delivered}
        elif kind == "retry" and self.request.retries < settings.push_max_retries:
            box.renew(claim_id)
            raise self.retry(countdown=backoff_seconds(self.request.retries))
        else:
            box.release(campaign_id, claim_id)
            runtime.campaign_health().degrade(campaign_id, answer.reason())
            log_event(
                log,
                logging.WARNING,
                "campaign_degraded",
                campaign=campaign_id,
                reason=answer.reason(),
            )
            return {"outcome": "released after retries", "delivered": delivered}
    box.release(campaign_id, claim_id)
    enqueue(box.claim(campaign_id, settings.probe_interval_seconds))
    return {"outcome": "done", "delivered": delivered}
