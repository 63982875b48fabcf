"""`stocks.verify` (beat): one paced sweep pass over every campaign sent to (worker/verify.py)."""

from __future__ import annotations

from typing import Any

from worker import runtime
from worker.app import app
from worker.settings import get_settings
from worker.verify import campaigns_to_sweep

# A pass ends within this long, so a pool slot is never held for long; waits longer than
# SHORT_WAIT_SECONDS (a full read window, a 420) end the pass: the next beat tick goes on.
PASS_SECONDS = 20.0
SHORT_WAIT_SECONDS = 3.0


@app.task(name="stocks.verify", send_events=False)  # housekeeping: out of Flower
def verify() -> dict[str, Any]:
    """Reads back what each campaign's pace allows now; repairs what drifted."""
    if get_settings().verify_hours <= 0:
        return {"campaigns": 0, "checked": 0}
    with runtime.engine().connect() as conn:
        campaigns = campaigns_to_sweep(conn, runtime.routing())
    verifier = runtime.verifier()
    checked = drifted = 0
    for campaign_id in campaigns:
        result = verifier.paced_pass(campaign_id, PASS_SECONDS, SHORT_WAIT_SECONDS)
        checked += result.checked
        drifted += sum(result.drifted.values())
    return {"campaigns": len(campaigns), "checked": checked, "drifted": drifted}
