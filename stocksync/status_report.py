"""What `stocksync status` reports: `worker.monitoring`'s figures, judged and formatted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine

from worker.monitoring import CampaignFigures, V3BusinessFigures, read_figures
from worker.routing_check import RoutingCheck, last_check
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class StatusReport:
    """Every campaign's figures, plus rejected changes that belong to no campaign."""

    campaigns: list[CampaignFigures]
    unreadable_messages: int
    rejected_without_campaign: int
    # The last routing check of the settings against the Market; None before the first.
    routing: RoutingCheck | None = field(default=None)
    v3_businesses: list[V3BusinessFigures] = field(default_factory=list)

    def too_old(self, max_age_seconds: float) -> list[CampaignFigures]:
        """Campaigns whose oldest pending change waits longer than `max_age_seconds`."""
        return [
            c
            for c in self.campaigns
            if c.oldest_pending_age_seconds is not None
            and c.oldest_pending_age_seconds > max_age_seconds
        ]

    def parked(self) -> list[CampaignFigures]:
        """Campaigns parked by a 401, 403 or 404."""
        return [c for c in self.campaigns if c.parked_reason is not None]

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready data: instants in ISO 8601, ages in seconds."""
        campaigns = []
        for campaign in self.campaigns:
            row = asdict(campaign)
            for name in ("last_push_at", "blocked_until", "last_full_sweep_at"):
                row[name] = row[name].isoformat() if row[name] else None
            campaigns.append(row)
        businesses = []
        for business in self.v3_businesses:
            row = asdict(business)
            row["blocked_until"] = (
                row["blocked_until"].isoformat() if row["blocked_until"] else None
            )
            businesses.append(row)
        return {
            "campaigns": campaigns,
            "v3_businesses": businesses,
            "unreadable_messages": self.unreadable_messages,
            "rejected_without_campaign": self.rejected_without_campaign,
            "routing": None if self.routing is None else self.routing.as_json(),
        }


def read_status(engine: Engine, settings: Settings) -> StatusReport:
    """Reads the report in one snapshot."""
    figures = read_figures(engine, settings)
    return StatusReport(
        figures.campaigns,
        figures.unreadable_messages,
        figures.rejected_without_campaign,
        last_check(engine),
        figures.v3_businesses,
    )
