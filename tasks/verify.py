"""`stocks.verify` (beat): one paced sweep pass over every campaign sent to (worker/verify.py)."""

from __future__ import annotations

import random
import time
from typing import Any

from worker import runtime
from worker.app import app
from worker.settings import get_settings
from worker.verify import campaigns_to_sweep

# A beat pass ends within this long in all (not per campaign), so the sweep never holds a pool
# process for long; waits longer than SHORT_WAIT_SECONDS (a full read window, a 420) end a
# campaign's part of the pass: the next beat tick goes on.
PASS_SECONDS = 20.0
SHORT_WAIT_SECONDS = 3.0


@app.task(name="stocks.verify", send_events=False)  # housekeeping: out of Flower
def verify() -> dict[str, Any]:
    """Reads back what each campaign's pace allows now, within PASS_SECONDS; repairs what
    drifted. One pass at a time across all workers: a pass that finds another running returns.
    The campaigns are taken in a random order, so a pass cut short by its time serves others
    next time."""
    if get_settings().verify_hours <= 0:
        return {"campaigns": 0, "checked": 0}
    verifier = runtime.verifier()
    with verifier.beat_turn() as held:
        if not held:
            return {"campaigns": 0, "checked": 0, "skipped": "another pass is running"}
        with runtime.engine().connect() as conn:
            campaigns = campaigns_to_sweep(conn, runtime.routing())
        random.shuffle(campaigns)
        deadline = time.monotonic() + PASS_SECONDS
        checked = drifted = served = 0
        for campaign_id in campaigns:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            result = verifier.paced_pass(campaign_id, left, SHORT_WAIT_SECONDS)
            served += 1
            checked += result.checked
            drifted += sum(result.drifted.values())
    return {"campaigns": len(campaigns), "served": served, "checked": checked, "drifted": drifted}
