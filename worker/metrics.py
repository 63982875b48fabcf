"""The Prometheus endpoint: domain figures read from PostgreSQL at each scrape.

Flower shows Celery's tasks; these are the stock service's own figures. Read at scrape time from
the shared tables, they cover every worker on every machine without multiprocess bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from worker.monitoring import read_figures
from worker.routing_check import RoutingCheck, last_check
from worker.settings import Settings

_PER_CAMPAIGN = [
    ("pending_keys", "Keys whose value the Market has not acknowledged yet", "pending_keys"),
    (
        "oldest_pending_seconds",
        "Age of the oldest pending change",
        "oldest_pending_age_seconds",
    ),
    ("parked_skus", "SKUs the Market rejected (400), held until they change", "parked_skus"),
    (
        "skus_pushed_last_hour",
        "SKUs acknowledged by the Market in the last hour",
        "skus_pushed_last_hour",
    ),
    ("requests_last_hour", "Requests sent to the Market in the last hour", "requests_last_hour"),
    ("rate_limited_last_hour", "420 answers in the last hour", "rate_limited_last_hour"),
    (
        "retried_requests_last_hour",
        "5xx answers, timeouts and broken connections in the last hour (each retried)",
        "failed_last_hour",
    ),
    ("rejected_changes", "Changes rejected at ingest (stored with their reasons)", "rejected"),
    ("rate_window_skus", "SKUs counted in the rolling 60-second window now", "skus_in_rate_window"),
]


class StockFigures(Collector):
    """A Prometheus collector over `worker.monitoring.read_figures`."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        figures = read_figures(self.engine, self.settings)
        for name, doc, attribute in _PER_CAMPAIGN:
            family = GaugeMetricFamily(f"stocksync_{name}", doc, labels=["campaign"])
            for c in figures.campaigns:
                value = getattr(c, attribute)
                family.add_metric([str(c.campaign_id)], 0.0 if value is None else float(value))
            yield family
        parked = GaugeMetricFamily(
            "stocksync_campaign_parked",
            "1 while the campaign is parked (401/403/404)",
            labels=["campaign"],
        )
        degraded = GaugeMetricFamily(
            "stocksync_campaign_degraded",
            "1 while retries ran out for the campaign",
            labels=["campaign"],
        )
        for c in figures.campaigns:
            parked.add_metric([str(c.campaign_id)], float(c.parked_reason is not None))
            degraded.add_metric([str(c.campaign_id)], float(c.degraded_reason is not None))
        yield parked
        yield degraded
        by_status = GaugeMetricFamily(
            "stocksync_market_requests_last_hour",
            "Requests to the Market in the last hour by answer (0: no answer)",
            labels=["campaign", "status"],
        )
        for (campaign, status), count in sorted(figures.requests_by_status.items()):
            by_status.add_metric([str(campaign), str(status)], float(count))
        yield by_status
        limit = GaugeMetricFamily(
            "stocksync_rate_limit_skus_per_minute", "The configured per-campaign limit"
        )
        limit.add_metric([], float(self.settings.rate_limit_skus_per_minute))
        yield limit
        unreadable = GaugeMetricFamily(
            "stocksync_unreadable_messages", "Messages that could not be read at all"
        )
        unreadable.add_metric([], float(figures.unreadable_messages))
        yield unreadable
        yield from _routing_families(last_check(self.engine))


def _routing_families(check: RoutingCheck | None) -> Iterator[Metric]:
    """The last routing check: differences from the Market, and when it was made."""
    mismatch = GaugeMetricFamily(
        "stocksync_routing_mismatch",
        "Differences between the routing settings and the Market at the last check "
        "(-1: the Market could not be read)",
    )
    checked = GaugeMetricFamily(
        "stocksync_routing_checked_timestamp_seconds",
        "When the routing settings were last checked against the Market (0: never)",
    )
    if check is None:
        checked.add_metric([], 0.0)
    else:
        mismatch.add_metric([], -1.0 if not check.readable else float(len(check.differences)))
        checked.add_metric([], check.checked_at.timestamp())
    yield mismatch
    yield checked
