"""What `stocksync status` reports: per campaign, the outbox backlog, last push and refusals."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from worker.outbox import UNREADABLE_POSITION
from worker.settings import Settings

# One statement for the whole report. A "campaign" is a stock key's group: the first campaign of
# a warehouse group, the one the Market is sent to. Refusals are counted under the group of the
# campaign they name. `parked_reason` is NULL until campaigns are parked: join that table here.
STATUS_QUERY = text("""
    WITH grouping AS (
        SELECT c AS campaign_id, g AS group_id
        FROM unnest(CAST(:campaigns AS bigint[]), CAST(:groups AS bigint[])) AS m(c, g)
    ),
    keys AS (
        SELECT group_id AS campaign_id,
               count(*) FILTER (WHERE version > acked_version) AS pending_keys,
               min(changed_at) FILTER (WHERE version > acked_version) AS oldest_pending_at,
               max(acked_at) AS last_push_at
        FROM stock
        GROUP BY group_id
    ),
    refusals AS (
        SELECT COALESCE(grouping.group_id, r.campaign_id) AS campaign_id, count(*) AS rejected
        FROM rejected AS r
        LEFT JOIN grouping ON grouping.campaign_id = r.campaign_id
        WHERE r.campaign_id IS NOT NULL
        GROUP BY 1
    )
    SELECT campaign_id,
           COALESCE(keys.pending_keys, 0) AS pending_keys,
           EXTRACT(EPOCH FROM now() - keys.oldest_pending_at) AS oldest_pending_age_seconds,
           keys.last_push_at,
           COALESCE(refusals.rejected, 0) AS rejected,
           CAST(NULL AS text) AS parked_reason
    FROM keys
    FULL JOIN refusals USING (campaign_id)
    ORDER BY campaign_id
""")

UNCAMPAIGNED_QUERY = text("""
    SELECT count(*) FILTER (WHERE position = :unreadable) AS unreadable_messages,
           count(*) FILTER (WHERE position <> :unreadable AND campaign_id IS NULL)
               AS rejected_without_campaign
    FROM rejected
""")


@dataclass(frozen=True, slots=True)
class CampaignStatus:
    """One campaign's line: pending keys, age of its oldest pending change, last push, refusals."""

    campaign_id: int
    pending_keys: int
    oldest_pending_age_seconds: float | None
    last_push_at: datetime | None
    rejected: int
    parked_reason: str | None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """The whole report: every campaign seen, plus refusals that belong to no campaign."""

    campaigns: list[CampaignStatus]
    unreadable_messages: int
    rejected_without_campaign: int

    def too_old(self, max_age_seconds: float) -> list[CampaignStatus]:
        """Campaigns whose oldest pending change waits longer than `max_age_seconds`."""
        return [
            c
            for c in self.campaigns
            if c.oldest_pending_age_seconds is not None
            and c.oldest_pending_age_seconds > max_age_seconds
        ]

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: instants in ISO 8601, ages in seconds."""
        campaigns = []
        for campaign in self.campaigns:
            row = asdict(campaign)
            row["last_push_at"] = (
                campaign.last_push_at.isoformat() if campaign.last_push_at else None
            )
            campaigns.append(row)
        return {
            "campaigns": campaigns,
            "unreadable_messages": self.unreadable_messages,
            "rejected_without_campaign": self.rejected_without_campaign,
        }


def read_status(engine: Engine, settings: Settings) -> StatusReport:
    """Reads the report in one snapshot (a repeatable-read transaction)."""
    grouping = [(c, group[0]) for group in settings.warehouse_groups for c in group]
    params = {"campaigns": [c for c, _ in grouping], "groups": [g for _, g in grouping]}
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        rows = conn.execute(STATUS_QUERY, params).all()
        unreadable, uncampaigned = conn.execute(
            UNCAMPAIGNED_QUERY, {"unreadable": UNREADABLE_POSITION}
        ).one()
    campaigns = [
        CampaignStatus(
            campaign_id=int(row.campaign_id),
            pending_keys=int(row.pending_keys),
            oldest_pending_age_seconds=(
                None
                if row.oldest_pending_age_seconds is None
                else round(float(row.oldest_pending_age_seconds), 3)
            ),
            last_push_at=row.last_push_at,
            rejected=int(row.rejected),
            parked_reason=row.parked_reason,
        )
        for row in rows
    ]
    return StatusReport(campaigns, int(unreadable), int(uncampaigned))
