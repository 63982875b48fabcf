"""`stocks.check_routing` (beat, hourly, and once when beat starts): the settings' routing against
the Market, stored for status and metrics (worker/routing_check.py)."""

from __future__ import annotations

from worker import runtime
from worker.app import app
from worker.routing_check import check_routing, reader_for
from worker.settings import get_settings


@app.task(name="stocks.check_routing", send_events=False)  # housekeeping: out of Flower
def check(at_start: bool = False) -> dict[str, object] | None:
    """One check; at start it is skipped when a fresh one under the same settings is stored."""
    settings = get_settings()
    result = check_routing(runtime.engine(), settings, reader_for(settings), at_start=at_start)
    return None if result is None else result.as_json()
