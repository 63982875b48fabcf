"""`stocks.drain` (beat): claim each campaign's pending keys in batches, enqueue their pushes."""

from __future__ import annotations

import time

from tasks.push import enqueue
from worker.app import app
from worker.database import get_engine
from worker.retention import prune
from worker.runtime import outbox
from worker.settings import get_settings

PRUNE_EVERY_SECONDS = 60.0
_last_prune = 0.0


@app.task(name="stocks.drain")
def drain() -> dict[str, int]:
    """One pass over the campaigns with pending keys; overlapping passes are harmless."""
    global _last_prune  # noqa: PLW0603 - one timestamp per process, no other state
    box = outbox()
    if time.monotonic() - _last_prune > PRUNE_EVERY_SECONDS:
        box.prune()
        _last_prune = time.monotonic()
    batches = 0
    campaigns = box.campaigns_to_drain()
    for campaign_id in campaigns:
        claims = box.claim(campaign_id, get_settings().probe_interval_seconds)
        enqueue(claims)
        batches += len(claims)
    return {"campaigns": len(campaigns), "batches": batches}


@app.task(name="stocks.prune")
def prune_history() -> dict[str, int]:
    """Deletes the change log and refusals the retention period no longer keeps."""
    pruned = prune(get_engine(), get_settings().retention_days)
    return {"changes": pruned.changes, "rejected": pruned.rejected}
