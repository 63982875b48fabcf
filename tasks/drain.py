"""`stocks.drain` (beat): claim the pending keys of campaigns with work, enqueue their pushes."""

from __future__ import annotations

from tasks.push import enqueue
from worker import runtime
from worker.app import app
from worker.drain_pass import run_pass
from worker.settings import get_settings


@app.task(name="stocks.drain", send_events=False)  # housekeeping: out of Flower
def drain() -> dict[str, int]:
    """One pass, bounded by the drain interval; overlapping passes are harmless."""
    settings = get_settings()
    runtime.routed()
    result = run_pass(
        runtime.claims(),
        settings.probe_interval_seconds,
        settings.drain_interval_seconds,
        enqueue,
    )
    return {"campaigns": result.campaigns, "served": result.served, "batches": result.batches}
