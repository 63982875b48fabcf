"""The service's figures per campaign, read from PostgreSQL: the status command and the metrics.

Everything is derived from the tables every worker writes, so one reader sees the whole
deployment, however many workers and machines it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, text

from domain.route import Method, Route
from worker import counters
from worker.counters import CounterRow
from worker.ingest import UNREADABLE_POSITION
from worker.rate_limiter import used_in_window
from worker.runtime import request_deadline
from worker.settings import Settings
from worker.verify import KEEPS_DRIFTING

# A "campaign" here is a stock key's group: the campaign the Market is sent to. Rejected changes are
# counted under the group of the campaign they name.
_CAMPAIGN_FIGURES = text(f"""
    WITH grouping AS (
        SELECT c AS campaign_id, g AS group_id
        FROM unnest(CAST(:campaigns AS bigint[]), CAST(:groups AS bigint[])) AS m(c, g)
    ),
    pending AS (
        SELECT group_id AS campaign_id,
               count(*) AS pending_keys,
               min(changed_at) AS oldest_pending_at,
               count(*) FILTER (WHERE parked_version = version) AS parked_skus
        FROM stock WHERE version > acked_version
        GROUP BY group_id
    ),
    requests AS (
        SELECT campaign_id,
               COALESCE(sum(skus) FILTER (WHERE status BETWEEN 200 AND 299
                   AND started_at > clock_timestamp() - interval '1 minute'), 0) AS skus_minute,
               COALESCE(sum(skus) FILTER (WHERE status BETWEEN 200 AND 299), 0) AS skus_hour,
               count(*) FILTER (WHERE NOT correction
                   AND started_at > clock_timestamp() - interval '1 minute') AS requests_minute,
               count(*) FILTER (WHERE NOT correction) AS requests_hour,
               count(*) FILTER (WHERE status = 420) AS rate_limited_hour,
               count(*) FILTER (WHERE status = 0 OR status >= 500) AS failed_hour,
               COALESCE(sum(skus) FILTER (WHERE COALESCE(finished_at, started_at)
                   > clock_timestamp() - interval '60 seconds'), 0) AS skus_in_window
        FROM market_request
        WHERE started_at > clock_timestamp() - interval '1 hour' AND kind = 'push'
        GROUP BY campaign_id
    ),
    checked AS (
        SELECT group_id AS campaign_id, count(*) AS keys_checked_day FROM stock
        WHERE version = acked_version AND verified_at > clock_timestamp() - interval '24 hours'
        GROUP BY group_id
    ),
    drifting AS (
        SELECT group_id AS campaign_id, count(DISTINCT sku) AS keeps_drifting FROM drift
        WHERE {KEEPS_DRIFTING}
        GROUP BY group_id
    ),
    rejected_changes AS (
        SELECT COALESCE(grouping.group_id, r.campaign_id) AS campaign_id, count(*) AS rejected
        FROM rejected AS r
        LEFT JOIN grouping ON grouping.campaign_id = r.campaign_id
        WHERE r.campaign_id IS NOT NULL
        GROUP BY 1
    ),
    campaigns AS (
        SELECT campaign_id FROM pending UNION SELECT campaign_id FROM requests
        UNION SELECT campaign_id FROM rejected_changes UNION SELECT campaign_id FROM campaign
    )
    SELECT campaigns.campaign_id,
           COALESCE(p.pending_keys, 0) AS pending_keys,
           EXTRACT(EPOCH FROM clock_timestamp() - p.oldest_pending_at) AS oldest_pending_age,
           COALESCE(p.parked_skus, 0) AS parked_skus,
           c.last_push_at, c.parked_reason, c.degraded_reason, c.blocked_until,
           COALESCE(q.skus_minute, 0) AS skus_minute, COALESCE(q.skus_hour, 0) AS skus_hour,
           COALESCE(q.requests_minute, 0) AS requests_minute,
           COALESCE(q.requests_hour, 0) AS requests_hour,
           COALESCE(q.rate_limited_hour, 0) AS rate_limited_hour,
           COALESCE(q.failed_hour, 0) AS failed_hour,
           COALESCE(q.skus_in_window, 0) AS skus_in_window,
           COALESCE(r.rejected, 0) AS rejected,
           c.last_full_sweep_at, COALESCE(k.keys_checked_day, 0) AS keys_checked_day,
           COALESCE(c.drift_found_total, 0) AS drift_found_total,
           COALESCE(c.drift_repaired_total, 0) AS drift_repaired_total,
           COALESCE(d.keeps_drifting, 0) AS keeps_drifting
    FROM campaigns
    LEFT JOIN pending p USING (campaign_id)
    LEFT JOIN requests q USING (campaign_id)
    LEFT JOIN rejected_changes r USING (campaign_id)
    LEFT JOIN campaign c USING (campaign_id)
    LEFT JOIN checked k USING (campaign_id)
    LEFT JOIN drifting d USING (campaign_id)
    ORDER BY campaigns.campaign_id
""")  # noqa: S608 - built from a constant fragment; every value is a bound parameter

_REQUESTS_BY_STATUS = text("""
    SELECT campaign_id, COALESCE(status, -1), count(*) FROM market_request
    WHERE started_at > clock_timestamp() - interval '1 hour' AND NOT correction
      AND status IS NOT NULL AND kind = 'push'
    GROUP BY 1, 2
""")

_UNREADABLE = text("""
    SELECT count(*) FILTER (WHERE position = :unreadable),
           count(*) FILTER (WHERE position <> :unreadable AND campaign_id IS NULL)
    FROM rejected
""")


@dataclass(frozen=True, slots=True)
class CampaignFigures:
    """One campaign's figures: backlog, pushes in the last minute and hour, trouble."""

    campaign_id: int
    pending_keys: int
    oldest_pending_age_seconds: float | None
    parked_skus: int
    last_push_at: datetime | None
    parked_reason: str | None
    degraded_reason: str | None
    blocked_until: datetime | None
    skus_pushed_last_minute: int
    skus_pushed_last_hour: int
    requests_last_minute: int
    requests_last_hour: int
    rate_limited_last_hour: int
    failed_last_hour: int
    skus_in_rate_window: int
    rejected: int
    # How the campaign's stock is sent: "v2" (its own PUT) or "v3" (its business's update, whose
    # requests, parking and 420s are the business's: see `Figures.v3_businesses`).
    method: str = "v2"
    business_id: int | None = None

    # The verify sweep: when every key was last read back, keys read in the last 24 h, drift
    # found and repaired (monotonic counters), keys left alone because they keep drifting.
    last_full_sweep_at: datetime | None = None
    keys_checked_last_day: int = 0
    drift_found_total: int = 0
    drift_repaired_total: int = 0
    keeps_drifting: int = 0


@dataclass(frozen=True, slots=True)
class V3BusinessFigures:
    """A v3 business: its campaigns and its requests against the requests-per-minute limit."""

    business_id: int
    campaigns: list[int]
    requests_last_minute: int
    requests_per_minute_limit: int
    # What the rate limiter counts in the business's window now (requests without a 5xx, plus the
    # Market's own count where it said more): the figure the next request is held against.
    requests_in_rate_window: int
    items_pushed_last_minute: int
    requests_last_hour: int
    rate_limited_last_hour: int
    failed_last_hour: int
    parked_reason: str | None
    blocked_until: datetime | None


@dataclass(frozen=True, slots=True)
class Figures:
    """Every campaign's figures, requests by status, and rejected changes that name no campaign;
    `requests_by_status` is keyed by route key (minus the business id for v3)."""

    campaigns: list[CampaignFigures]
    requests_by_status: dict[tuple[int, int], int]
    unreadable_messages: int
    rejected_without_campaign: int
    v3_businesses: list[V3BusinessFigures] = field(default_factory=list)


def read_figures(engine: Engine, settings: Settings) -> Figures:
    """Reads every figure in one snapshot (a repeatable-read transaction)."""
    grouping = [(c, group[0]) for group in settings.warehouse_groups for c in group]
    params = {"campaigns": [c for c, _ in grouping], "groups": [g for _, g in grouping]}
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        rows = conn.execute(_CAMPAIGN_FIGURES, params).all()
        by_status = {(int(c), int(s)): int(n) for c, s, n in conn.execute(_REQUESTS_BY_STATUS)}
        unreadable, uncampaigned = conn.execute(
            _UNREADABLE, {"unreadable": UNREADABLE_POSITION}
        ).one()
        v3 = settings.v3_campaigns
        # Rows with a negative id are v3 businesses (route keys, domain/route.py).
        business_rows = {-int(r.campaign_id): r for r in rows if r.campaign_id < 0}
        businesses = sorted({t.business_id for t in v3.values()} | set(business_rows))
        deadline = request_deadline(settings)
        in_window = {b: used_in_window(conn, Route(Method.V3, b).key, deadline) for b in businesses}
    campaigns = [
        _campaign(r, v3[r.campaign_id].business_id if r.campaign_id in v3 else None, business_rows)
        for r in rows
        if r.campaign_id > 0
    ]
    v3_businesses = [_business(b, business_rows.get(b), settings, in_window[b]) for b in businesses]
    return Figures(campaigns, by_status, int(unreadable), int(uncampaigned), v3_businesses)


def _business(
    business: int, row: Row[Any] | None, settings: Settings, in_window: int
) -> V3BusinessFigures:
    campaigns = sorted(c for c, t in settings.v3_campaigns.items() if t.business_id == business)
    return V3BusinessFigures(
        business_id=business,
        campaigns=campaigns,
        requests_last_minute=int(row.requests_minute) if row else 0,
        requests_per_minute_limit=settings.v3_requests_per_minute,
        requests_in_rate_window=in_window,
        items_pushed_last_minute=int(row.skus_minute) if row else 0,
        requests_last_hour=int(row.requests_hour) if row else 0,
        rate_limited_last_hour=int(row.rate_limited_hour) if row else 0,
        failed_last_hour=int(row.failed_hour) if row else 0,
        parked_reason=row.parked_reason if row else None,
        blocked_until=row.blocked_until if row else None,
    )


def _campaign(
    r: Row[Any], business_id: int | None, business_rows: dict[int, Row[Any]]
) -> CampaignFigures:
    """One campaign's figures; a v3 campaign's health (last push, parked, degraded, 420) is its
    business's."""
    health = r if business_id is None else business_rows.get(business_id, r)
    return CampaignFigures(
        campaign_id=int(r.campaign_id),
        pending_keys=int(r.pending_keys),
        oldest_pending_age_seconds=(
            None if r.oldest_pending_age is None else round(float(r.oldest_pending_age), 3)
        ),
        parked_skus=int(r.parked_skus),
        last_push_at=health.last_push_at,
        parked_reason=health.parked_reason,
        degraded_reason=health.degraded_reason,
        blocked_until=health.blocked_until,
        skus_pushed_last_minute=int(r.skus_minute),
        skus_pushed_last_hour=int(r.skus_hour),
        requests_last_minute=int(r.requests_minute),
        requests_last_hour=int(r.requests_hour),
        rate_limited_last_hour=int(r.rate_limited_hour),
        failed_last_hour=int(r.failed_hour),
        skus_in_rate_window=int(r.skus_in_window),
        rejected=int(r.rejected),
        method="v2" if business_id is None else "v3",
        business_id=business_id,
        last_full_sweep_at=r.last_full_sweep_at,
        keys_checked_last_day=int(r.keys_checked_day),
        drift_found_total=int(r.drift_found_total),
        drift_repaired_total=int(r.drift_repaired_total),
        keeps_drifting=int(r.keeps_drifting),
    )


# The metrics scrape: O(campaigns), whatever the backlog. Pending and held keys per campaign are
# the sums of `stock_tally` (delta rows the triggers on `stock` write, folded by housekeeping);
# the oldest pending change is the first entry of the campaign's range of the pending index.
# Nothing reads `rejected` or the request ledger: those figures are counters.
SCRAPE_TIMEOUT_MS = 5000

_SCRAPE_CAMPAIGNS = text(f"""
    WITH tallies AS (
        SELECT group_id AS campaign_id, sum(pending) AS pending_keys, sum(held) AS held_skus
        FROM stock_tally GROUP BY group_id
    ),
    campaigns AS (
        SELECT campaign_id FROM tallies
        UNION SELECT campaign_id FROM campaign
        UNION SELECT unnest(CAST(:configured AS bigint[]))
    )
    SELECT c.campaign_id,
           COALESCE(t.pending_keys, 0) AS pending_keys,
           EXTRACT(EPOCH FROM clock_timestamp() - (
               SELECT s.changed_at FROM stock s
               WHERE s.group_id = c.campaign_id AND s.version > s.acked_version
               ORDER BY s.changed_at LIMIT 1)) AS oldest_pending_age,
           COALESCE(t.held_skus, 0) AS held_skus,
           h.parked_reason IS NOT NULL AS parked,
           h.degraded_reason IS NOT NULL AS degraded,
           GREATEST(EXTRACT(EPOCH FROM h.blocked_until - clock_timestamp()), 0) AS blocked_seconds,
           EXTRACT(EPOCH FROM h.last_full_sweep_at) AS last_full_sweep,
           COALESCE(h.keys_checked_total, 0) AS keys_checked_total,
           (SELECT count(DISTINCT d.sku) FROM drift d
            WHERE d.group_id = c.campaign_id AND {KEEPS_DRIFTING}) AS keeps_drifting
    FROM campaigns c
    LEFT JOIN tallies t USING (campaign_id)
    LEFT JOIN campaign h USING (campaign_id)
    ORDER BY c.campaign_id
""")  # noqa: S608 - built from a constant fragment; every value is a bound parameter


@dataclass(frozen=True, slots=True)
class CampaignGauges:
    """One campaign's state now: backlog, held SKUs, parked/degraded, seconds blocked by a 420;
    the verify sweep's last full round (Unix time, 0: never), keys read back (monotonic) and keys
    that keep drifting."""

    campaign_id: int
    pending_keys: int
    oldest_pending_age_seconds: float
    held_skus: int
    parked: bool
    degraded: bool
    blocked_seconds: float
    last_full_sweep_timestamp: float = 0.0
    keys_checked_total: int = 0
    keeps_drifting: int = 0


@dataclass(frozen=True, slots=True)
class Scrape:
    """What one metrics scrape reads: every campaign's gauges and every counter row."""

    campaigns: list[CampaignGauges]
    counters: list[CounterRow]


def read_scrape(engine: Engine, settings: Settings, timeout_ms: int = SCRAPE_TIMEOUT_MS) -> Scrape:
    """Reads the scrape in one snapshot under a statement timeout (a slow database fails the
    scrape rather than piling scrapes up)."""
    configured = sorted({group[0] for group in settings.warehouse_groups})
    snapshot = engine.connect().execution_options(isolation_level="REPEATABLE READ")
    with snapshot as conn, conn.begin():
        conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
        rows = conn.execute(_SCRAPE_CAMPAIGNS, {"configured": configured}).all()
        counter_rows = counters.read_all(conn)
    return Scrape(
        [
            CampaignGauges(
                campaign_id=int(r.campaign_id),
                pending_keys=int(r.pending_keys),
                oldest_pending_age_seconds=(
                    0.0 if r.oldest_pending_age is None else max(float(r.oldest_pending_age), 0.0)
                ),
                held_skus=int(r.held_skus),
                parked=bool(r.parked),
                degraded=bool(r.degraded),
                blocked_seconds=float(r.blocked_seconds or 0.0),
                last_full_sweep_timestamp=float(r.last_full_sweep or 0.0),
                keys_checked_total=int(r.keys_checked_total),
                keeps_drifting=int(r.keeps_drifting),
            )
            for r in rows
        ],
        counter_rows,
    )
