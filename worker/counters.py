"""Monotonic counters in PostgreSQL: incremented in the transaction that does the counted work.

One row per (name, campaign, label) in the `counter` table. Because the increment commits or rolls
back with the work, every worker's work is counted exactly once, and because pruning never deletes
a counter row, no counter falls when old rows of `rejected` or `market_request` go.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, text

# The counters' names in the table (the exposition adds `stocksync_` and `_total`).
SKUS_PUSHED = "skus_pushed"
MARKET_REQUESTS = "market_requests"  # label: the HTTP status, "0" for no answer
MARKET_RATE_LIMITED = "market_rate_limited"  # 420 answers
PUSH_RETRIES = "push_retries"  # Celery retries of stocks.push (420, 5xx, no answer)
# Pushes that handed their keys back without delivering: retries spent or an unexpected status.
PUSH_GIVEN_UP = "push_given_up"  # label: the last HTTP status, "0" for no answer
REJECTED_CHANGES = "rejected_changes"  # campaign 0: the change named no valid campaign
UNREADABLE_MESSAGES = "unreadable_messages"
# Drift between the Market's stock and ours (issue 8): counted here by whoever finds or repairs.
DRIFT_FOUND = "drift_found"
DRIFT_REPAIRED = "drift_repaired"

# The request-duration histogram: one row per bucket (its upper bound as the label, not
# cumulative: the exposition sums them), plus the sum of durations.
DURATION_BUCKET = "market_request_duration_seconds_bucket"
DURATION_SUM = "market_request_duration_seconds_sum"
DURATION_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The limiter-wait histogram, kept the same way: seconds from a push's first ask for leave to its
# leave, one observation per request sent (a wait the push hands back ends the run instead).
LIMITER_WAIT_BUCKET = "limiter_wait_seconds_bucket"
LIMITER_WAIT_SUM = "limiter_wait_seconds_sum"
LIMITER_WAIT_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
INF = "+Inf"

NO_CAMPAIGN = 0

_ADD = text("""
    INSERT INTO counter (name, campaign_id, label, value)
    SELECT n, c, l, v
    FROM unnest(CAST(:names AS text[]), CAST(:campaigns AS bigint[]), CAST(:labels AS text[]),
                CAST(:values AS double precision[])) AS x(n, c, l, v)
    ORDER BY n, c, l
    ON CONFLICT (name, campaign_id, label) DO UPDATE SET value = counter.value + EXCLUDED.value
""")

_READ = text("SELECT name, campaign_id, label, value FROM counter")

CounterKey = tuple[str, int, str]


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One counter's value: name, campaign (0: none) and label ('' : none)."""

    name: str
    campaign_id: int
    label: str
    value: float


def add(conn: Connection, increments: Iterable[tuple[CounterKey, float]]) -> None:
    """Adds to counters inside the caller's transaction; rows are locked in key order (no
    deadlock between two callers), and only positive amounts are added (counters never fall)."""
    totals: defaultdict[CounterKey, float] = defaultdict(float)
    for key, amount in increments:
        if amount > 0:
            totals[key] += amount
    if not totals:
        return
    keys = sorted(totals)
    conn.execute(
        _ADD,
        {
            "names": [k[0] for k in keys],
            "campaigns": [k[1] for k in keys],
            "labels": [k[2] for k in keys],
            "values": [float(totals[k]) for k in keys],
        },
    )


def _observation(
    names: tuple[str, str], bounds: tuple[float, ...], campaign_id: int, seconds: float
) -> list[tuple[CounterKey, float]]:
    """The rows one observation of a histogram adds to: its bucket (`names[0]`) and the sum."""
    bucket = next((f"{b:g}" for b in bounds if seconds <= b), INF)
    return [((names[0], campaign_id, bucket), 1.0), ((names[1], campaign_id, ""), seconds)]


def duration_increments(campaign_id: int, seconds: float) -> list[tuple[CounterKey, float]]:
    """The histogram rows one request of `seconds` adds to: its bucket and the sum."""
    return _observation((DURATION_BUCKET, DURATION_SUM), DURATION_BOUNDS, campaign_id, seconds)


def limiter_wait_increments(campaign_id: int, seconds: float) -> list[tuple[CounterKey, float]]:
    """The limiter-wait histogram rows of one request that waited `seconds` for its leave."""
    return _observation(
        (LIMITER_WAIT_BUCKET, LIMITER_WAIT_SUM), LIMITER_WAIT_BOUNDS, campaign_id, seconds
    )


def read_all(conn: Connection) -> list[CounterRow]:
    """Every counter row: O(campaigns and labels), never O(work done)."""
    return [CounterRow(str(n), int(c), str(lbl), float(v)) for n, c, lbl, v in conn.execute(_READ)]
