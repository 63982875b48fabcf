"""One drain pass: the campaigns with work take turns, least recently drained first.

A pass is bounded in time: it stops after `budget_seconds` (the drain interval), and the next pass
begins with the campaigns this one did not reach, because each claim records the campaign's turn
(`campaign.drained_at`). Every campaign first gets one batch; only then, while time is left, do
campaigns with a full batch get the rest of their parallel slots, so one big backlog never
delays the first batch of the others. A push that finishes claims its campaign's next batch
itself, so a campaign's pipeline fills between passes too.

So a campaign with a live claim (a push queued or under way) already has its turn: a pass does
not visit it for a first batch. Its pushes' follow-up claims take what comes next; only a
backlog (a live claim that is a full batch) is visited, with the rest of its slots, once the
others were served. A burst measured the difference: after one pass per campaign, the passes
still visited ~150 campaigns each whose keys were all claimed, for nothing, 8 statements each,
and the pushes they waited for ran at half speed meanwhile (BENCHMARKS.md, "production shape").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from domain.market_rules import SKUS_PER_REQUEST_MAX
from worker.claims import Claim, Claims
from worker.logs import log_context


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: campaigns with work it found and served, and batches it claimed."""

    campaigns: int
    served: int
    batches: int


def run_pass(
    claims: Claims,
    probe_interval: float,
    budget_seconds: float,
    enqueue: Callable[[list[Claim]], None],
) -> PassResult:
    """Claims batches for the campaigns with work, fairly, for about `budget_seconds`; every
    claimed batch goes to `enqueue` at once."""
    deadline = time.monotonic() + budget_seconds
    campaigns = claims.campaigns_to_drain()
    held = claims.held() if campaigns else {}
    served = 0
    batches = 0
    wants_more = [c for c in campaigns if held.get(c, 0) >= SKUS_PER_REQUEST_MAX]
    for campaign_id in campaigns:
        if campaign_id in held:
            continue
        if served and time.monotonic() >= deadline:
            break
        with log_context(campaign=campaign_id):  # what claiming and enqueueing log names it
            claimed = claims.claim(campaign_id, probe_interval, max_batches=1)
            enqueue(claimed)
        served += 1
        batches += len(claimed)
        if sum(c.skus for c in claimed) >= SKUS_PER_REQUEST_MAX:
            wants_more.append(campaign_id)
    for campaign_id in wants_more:
        if time.monotonic() >= deadline:
            break
        with log_context(campaign=campaign_id):
            claimed = claims.claim(campaign_id, probe_interval)
            enqueue(claimed)
        batches += len(claimed)
    return PassResult(len(campaigns), served, batches)
