"""deploy/: the alert rules and Prometheus config checked by promtool, the Grafana dashboard's
shape. promtool is a real dependency of these tests (Debian package `prometheus`): they fail
when it is missing rather than skip."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "stocksync.json"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install -y prometheus"
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_alert_rules_pass_promtool_check_rules() -> None:
    result = _promtool("check", "rules", "alerts.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_each_alert_fires_on_its_series_and_only_then() -> None:
    # alerts_test.yml: every alert's firing and quiet cases, evaluated by Prometheus's engine.
    result = _promtool("test", "rules", "alerts_test.yml")

    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_passes_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")

    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_mirror_the_status_commands_exit_rules() -> None:
    from stocksync.commands.status import DEFAULT_MAX_AGE_SECONDS

    rules = {
        rule["alert"]: rule
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text("utf-8"))["groups"]
        for rule in group["rules"]
    }

    too_old = rules["StocksyncOldestPendingTooOld"]["expr"]
    assert too_old.endswith(f"> {DEFAULT_MAX_AGE_SECONDS:g}")
    assert "stocksync_campaign_parked" in rules["StocksyncCampaignParked"]["expr"]
    assert "stocksync_campaign_degraded" in rules["StocksyncCampaignDegraded"]["expr"]
    assert (
        "increase(stocksync_unreadable_messages_total"
        in (rules["StocksyncUnreadableMessagesGrowing"]["expr"])
    )
    assert "flower_worker_online" in rules["StocksyncNoWorkerOnline"]["expr"]
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"page", "warn"}, name
        assert rule["annotations"]["summary"], name


def test_dashboard_has_the_fields_grafana_needs(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "stocksync" and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["templating"]["list"][0]["name"] == "campaign"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] in {"row", "timeseries", "stat", "table"}, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids)), panel["title"]
            assert all(t["expr"] for t in panel["targets"]), panel["title"]


def test_dashboard_has_panels_on_every_subject_of_the_issue(dashboard: dict[str, Any]) -> None:
    exprs = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", []))
    for name in (
        "rate(stocksync_skus_pushed_total",
        "stocksync_market_requests_total",
        "stocksync_market_rate_limited_total",
        "stocksync_pending_keys",
        "stocksync_oldest_pending_age_seconds",
        "stocksync_campaign_parked",
        "stocksync_campaign_degraded",
        "stocksync_drift_found_total",
        "stocksync_drift_repaired_total",
        "stocksync_market_request_duration_seconds_bucket",
    ):
        assert name in exprs, name
    # Counters are only ever read through rate() or increase(): their raw value means nothing.
    for counter in re.findall(r"[\w(]*?\(?(stocksync_\w+_total)", exprs):
        assert re.search(rf"(rate|increase)\({counter}", exprs), counter
