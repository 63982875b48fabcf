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
        v3_by_status = GaugeMetricFamily(
            "stocksync_v3_requests_last_hour",
            "v3 requests to the Market in the last hour by business and answer (0: no answer)",
            labels=["business", "status"],
        )
        for (route_key, status), count in sorted(figures.requests_by_status.items()):
            if route_key > 0:
                by_status.add_metric([str(route_key), str(status)], float(count))
            else:  # a v3 business (domain/route.py)
                v3_by_status.add_metric([str(-route_key), str(status)], float(count))
        yield by_status
        yield v3_by_status
        method = GaugeMetricFamily(
            "stocksync_campaign_method",
            "1 for the method a campaign's stock is sent by (v2 PUT, or v3 to its business)",
            labels=["campaign", "method", "business"],
        )
        for c in figures.campaigns:
            business = "" if c.business_id is None else str(c.business_id)
            method.add_metric([str(c.campaign_id), c.method, business], 1.0)
        yield method
        v3_used = GaugeMetricFamily(
            "stocksync_v3_requests_last_minute",
            "v3 requests a business made in the last minute (its limit: "
            "stocksync_v3_requests_per_minute)",
            labels=["business"],
        )
        for b in figures.v3_businesses:
            v3_used.add_metric([str(b.business_id)], float(b.requests_last_minute))
        yield v3_used
        v3_limit = GaugeMetricFamily(
            "stocksync_v3_requests_per_minute", "The configured per-business v3 request limit"
        )
        v3_limit.add_metric([], float(self.settings.v3_requests_per_minute))
        yield v3_limit
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
