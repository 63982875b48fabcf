"""`stocks.drain` (beat): claim each campaign's pending keys in batches, enqueue their pushes."""

from __future__ import annotations

from tasks.push import enqueue
from worker import runtime
from worker.app import app
from worker.settings import get_settings


@app.task(name="stocks.drain")
def drain() -> dict[str, int]:
    """One pass over the campaigns with pending keys; overlapping passes are harmless."""
    claims = runtime.claims()
    batches = 0
    campaigns = claims.campaigns_to_drain()
    for campaign_id in campaigns:
        claimed = claims.claim(campaign_id, get_settings().probe_interval_seconds)
        enqueue(claimed)
        batches += len(claimed)
    return {"campaigns": len(campaigns), "batches": batches}
