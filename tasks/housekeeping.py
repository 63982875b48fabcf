"""`stocks.housekeeping` (beat): every deletion that keeps PostgreSQL small, in one task."""

from __future__ import annotations

from worker import runtime
from worker.app import app
from worker.housekeeping import housekeeping
from worker.settings import get_settings


@app.task(name="stocks.housekeeping", send_events=False)  # housekeeping: out of Flower
def housekeep() -> dict[str, int]:
    """Expired claims, the old request ledger, and history past the retention period."""
    pruned = housekeeping(runtime.engine(), get_settings().retention_days)
    return {"changes": pruned.changes, "rejected": pruned.rejected}


@app.task(name="stocks.prune", send_events=False)  # housekeeping: out of Flower
def prune() -> dict[str, int]:
    """The task's former name: a message a beat of an earlier version queued still runs."""
    return housekeep()
