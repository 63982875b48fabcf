"""The Prometheus endpoint: counters and gauges read from PostgreSQL at each scrape.

Flower shows Celery's tasks; these are the stock service's own figures. Counters are rows every
worker increments in the transaction that does the work (worker/counters.py), so they cover every
worker on every machine and never fall when old rows are pruned; gauges are the state now. One
scrape costs O(campaigns) (worker.monitoring.read_scrape).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from worker import counters
from worker.monitoring import CampaignGauges, read_scrape
from worker.routing_check import RoutingCheck, last_check
from worker.settings import Settings

PREFIX = "stocksync_"

# (table name, exposed name without _total, help, label of the `label` column or None).
COUNTERS: tuple[tuple[str, str, str, str | None], ...] = (
    (counters.SKUS_PUSHED, "skus_pushed", "SKUs whose values the Market acknowledged", None),
    (
        counters.MARKET_REQUESTS,
        "market_requests",
        "Requests answered by the Market, by HTTP status (0: no answer, timeout or broken link)",
        "status",
    ),
    (counters.MARKET_RATE_LIMITED, "market_rate_limited", "420 answers from the Market", None),
    (
        counters.PUSH_RETRIES,
        "push_retries",
        "Celery retries of stocks.push after a 420, a 5xx or no answer",
        None,
    ),
    (
        counters.PUSH_GIVEN_UP,
        "push_given_up",
        "Pushes that handed their keys back undelivered (retries spent or an unexpected status), "
        "by the last HTTP status (0: no answer)",
        "status",
    ),
    (
        counters.REJECTED_CHANGES,
        "rejected_changes",
        'Changes rejected at ingest, by the campaign group they name ("none": no valid campaign)',
        None,
    ),
    (counters.DRIFT_FOUND, "drift_found", "Keys whose Market stock differed from ours", None),
    (counters.DRIFT_REPAIRED, "drift_repaired", "Drifted keys sent again to repair them", None),
)
UNREADABLE = "unreadable_messages"


def package_version() -> str:
    """The installed stocksync's version, from the package metadata."""
    try:
        return version("stocksync")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _campaign(route_key: int) -> str:
    """The `campaign` label of a route key: a v3 business's (minus its id) is `business:<id>`."""
    if route_key == counters.NO_CAMPAIGN:
        return "none"
    return str(route_key) if route_key > 0 else f"business:{-route_key}"


class StockFigures(Collector):
    """A Prometheus collector over `worker.monitoring.read_scrape`."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        scrape = read_scrape(self.engine, self.settings)
        by_name: dict[str, list[counters.CounterRow]] = defaultdict(list)
        for row in scrape.counters:
            by_name[row.name].append(row)

        build = GaugeMetricFamily(
            f"{PREFIX}build_info", "The running stocksync's version", labels=["version"]
        )
        build.add_metric([package_version()], 1.0)
        yield build

        known = [c.campaign_id for c in scrape.campaigns]
        for table_name, name, doc, label in COUNTERS:
            labels = ["campaign"] if label is None else ["campaign", label]
            family = CounterMetricFamily(f"{PREFIX}{name}", doc, labels=labels)
            values = {(row.campaign_id, row.label): row.value for row in by_name[table_name]}
            if label is None:  # every campaign's series exists from 0, so increase() sees a first 1
                values = {(c, ""): 0.0 for c in known} | values
            for (campaign_id, label_value), value in sorted(values.items()):
                extra = [] if label is None else [label_value]
                family.add_metric([_campaign(campaign_id), *extra], value)
            yield family
        unreadable = CounterMetricFamily(
            f"{PREFIX}{UNREADABLE}", "Messages that could not be read at all (kept aside)"
        )
        unreadable.add_metric([], sum(r.value for r in by_name[counters.UNREADABLE_MESSAGES]))
        yield unreadable
        yield self._durations(by_name)
        yield _histogram(
            by_name,
            f"{PREFIX}limiter_wait_seconds",
            "Time a push waited for the limiter's leave (window, parallel slots, the campaign's "
            "row), from its first ask to the leave, per request sent",
            (counters.LIMITER_WAIT_BUCKET, counters.LIMITER_WAIT_SUM),
            counters.LIMITER_WAIT_BOUNDS,
        )
        yield from self._gauges(scrape.campaigns)
        yield from _routing_families(last_check(self.engine))

    def _durations(self, by_name: dict[str, list[counters.CounterRow]]) -> Metric:
        """The request-duration histogram."""
        return _histogram(
            by_name,
            f"{PREFIX}market_request_duration_seconds",
            "Time from a request's leave to send until the Market's answer",
            (counters.DURATION_BUCKET, counters.DURATION_SUM),
            counters.DURATION_BOUNDS,
        )

    def _gauges(self, campaigns: list[CampaignGauges]) -> Iterator[Metric]:
        per_campaign = (
            ("pending_keys", "Keys whose value the Market has not acknowledged", "pending_keys"),
            (
                "oldest_pending_age_seconds",
                "Age of the oldest pending change (0: nothing pending)",
                "oldest_pending_age_seconds",
            ),
            ("held_skus", "SKUs the Market refused (400), held until they change", "held_skus"),
            ("campaign_parked", "1 while the campaign is parked (401/403/404)", "parked"),
            ("campaign_degraded", "1 while retries ran out for the campaign", "degraded"),
            (
                "campaign_blocked_seconds",
                "Seconds until a 420's block ends (0: not blocked)",
                "blocked_seconds",
            ),
            (
                "last_full_sweep_timestamp_seconds",
                "When the verify sweep last read every key of the campaign back (0: never)",
                "last_full_sweep_timestamp",
            ),
            (
                "keeps_drifting_keys",
                "Keys that drifted more than 3 times in 24 hours, left alone until a resync",
                "keeps_drifting",
            ),
        )
        for name, doc, attribute in per_campaign:
            family = GaugeMetricFamily(f"{PREFIX}{name}", doc, labels=["campaign"])
            for c in campaigns:
                family.add_metric([_campaign(c.campaign_id)], float(getattr(c, attribute)))
            yield family
        # A column of `campaign` raised by the sweep in its batch's transaction: keys checked in
        # 24 h is increase(stocksync_verify_keys_checked_total[24h]).
        checked = CounterMetricFamily(
            f"{PREFIX}verify_keys_checked",
            "Keys the verify sweep read back from the Market",
            labels=["campaign"],
        )
        for c in campaigns:
            if c.campaign_id > 0:  # a v3 business's route row is never swept itself
                checked.add_metric([_campaign(c.campaign_id)], float(c.keys_checked_total))
        yield checked
        limit = GaugeMetricFamily(
            f"{PREFIX}rate_limit_skus",
            "The configured limit of SKUs per campaign in any rolling 60 seconds",
        )
        limit.add_metric([], float(self.settings.rate_limit_skus_per_minute))
        yield limit
        v3 = self.settings.v3_campaigns
        method = GaugeMetricFamily(
            f"{PREFIX}campaign_method",
            "1 for the method a campaign's stock is sent by (v2 PUT, or v3 to its business)",
            labels=["campaign", "method", "business"],
        )
        configured = {c.campaign_id for c in campaigns if c.campaign_id > 0} | set(v3)
        for campaign_id in sorted(configured):
            if campaign_id in v3:
                method.add_metric([str(campaign_id), "v3", str(v3[campaign_id].business_id)], 1.0)
            else:
                method.add_metric([str(campaign_id), "v2", ""], 1.0)
        yield method
        v3_limit = GaugeMetricFamily(
            f"{PREFIX}v3_requests_per_minute",
            "The configured limit of v3 requests per business in any rolling 60 seconds",
        )
        v3_limit.add_metric([], float(self.settings.v3_requests_per_minute))
        yield v3_limit


def _histogram(
    by_name: dict[str, list[counters.CounterRow]],
    name: str,
    doc: str,
    rows: tuple[str, str],
    bounds: tuple[float, ...],
) -> Metric:
    """A per-campaign histogram: its per-bucket rows (`rows[0]`) summed into cumulative buckets,
    its sum (`rows[1]`)."""
    family = HistogramMetricFamily(name, doc, labels=["campaign"])
    buckets: dict[int, dict[str, float]] = defaultdict(dict)
    for row in by_name[rows[0]]:
        buckets[row.campaign_id][row.label] = row.value
    sums = {row.campaign_id: row.value for row in by_name[rows[1]]}
    labels = [f"{b:g}" for b in bounds] + [counters.INF]
    for campaign_id in sorted(buckets):
        cumulative, total = [], 0.0
        for bound in labels:
            total += buckets[campaign_id].get(bound, 0.0)
            cumulative.append((bound, total))
        family.add_metric(
            [_campaign(campaign_id)], cumulative, sum_value=sums.get(campaign_id, 0.0)
        )
    return family


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
