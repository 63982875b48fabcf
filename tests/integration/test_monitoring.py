"""Figures for operators, read from a known state of the real database."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, text

from worker.metrics import StockFigures
from worker.monitoring import read_figures
from worker.settings import Settings

KNOWN_STATE = """
INSERT INTO stock (group_id, sku, delta_sum, version, acked_version, changed_at, parked_version,
                   parked_reason)
VALUES (5, 'A', 1, 2, 1, now() - interval '90 seconds', NULL, NULL),
       (5, 'B', 1, 3, 1, now() - interval '10 seconds', 3, '400: refused'),
       (5, 'C', 1, 1, 1, now() - interval '1 day', NULL, NULL),
       (6, 'A', 1, 1, 1, now(), NULL, NULL);
INSERT INTO campaign (campaign_id, parked_reason, last_push_at)
VALUES (5, NULL, now() - interval '5 seconds'), (6, 'HTTP 401: UNAUTHORIZED: no key', NULL);
INSERT INTO market_request (campaign_id, skus, started_at, finished_at, status)
VALUES (5, 2000, now() - interval '10 seconds', now() - interval '9 seconds', 200),
       (5, 500, now() - interval '30 minutes', now() - interval '30 minutes', 200),
       (5, 100, now() - interval '20 seconds', now() - interval '19 seconds', 420),
       (5, 0, now() - interval '15 seconds', now() - interval '14 seconds', 500),
       (5, 10, now() - interval '2 hours', now() - interval '2 hours', 200),
       (6, 1, now() - interval '5 seconds', now() - interval '5 seconds', 401);
INSERT INTO rejected (task_id, position, campaign_id, raw, reason)
VALUES ('t1', 0, 1002, '{}', 'sku: is required'), ('t1', 1, 6, '{}', 'count: x'),
       ('t2', -1, NULL, '5', 'changes: must be a list of change objects');
"""


@pytest.fixture
def known_state(engine: Engine) -> Engine:
    with engine.begin() as conn:
        for statement in KNOWN_STATE.split(";"):
            if statement.strip():
                conn.execute(text(statement))
    return engine


def test_figures_per_campaign_match_the_known_state(
    known_state: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[5, 1002]]")
    figures = read_figures(known_state, Settings())
    five, six = figures.campaigns
    assert (five.campaign_id, five.pending_keys, five.parked_skus) == (5, 2, 1)
    assert five.oldest_pending_age_seconds is not None
    assert 89 <= five.oldest_pending_age_seconds < 120
    assert (five.skus_pushed_last_minute, five.skus_pushed_last_hour) == (2000, 2500)
    assert (five.requests_last_minute, five.requests_last_hour) == (3, 4)
    assert (five.rate_limited_last_hour, five.failed_last_hour) == (1, 1)
    assert five.skus_in_rate_window == 2100
    assert five.rejected == 1  # campaign 1002 is in 5's group
    assert six.parked_reason == "HTTP 401: UNAUTHORIZED: no key"
    assert (six.pending_keys, six.rejected) == (0, 1)
    assert figures.unreadable_messages == 1
    assert figures.requests_by_status[(5, 200)] == 2


def test_metrics_endpoint_exposes_the_state_as_gauges(known_state: Engine) -> None:
    registry = CollectorRegistry()
    registry.register(StockFigures(known_state, Settings()))
    exposition = generate_latest(registry).decode()
    assert 'stocksync_pending_keys{campaign="5"} 2.0' in exposition
    assert 'stocksync_held_skus{campaign="5"} 1.0' in exposition
    assert 'stocksync_campaign_parked{campaign="6"} 1.0' in exposition
    assert 'stocksync_campaign_parked{campaign="5"} 0.0' in exposition
    assert "stocksync_rate_limit_skus 100000.0" in exposition


def test_metrics_have_no_windowed_gauges(known_state: Engine) -> None:
    registry = CollectorRegistry()
    registry.register(StockFigures(known_state, Settings()))
    exposition = generate_latest(registry).decode()

    assert "_last_hour" not in exposition and "_last_minute" not in exposition
