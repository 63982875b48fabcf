"""`stocksync discover` and the service's routing check against the sandbox over real HTTP:
cabinets with warehouse groups, without, and mixed; mismatches reported; the read limits kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from sandbox import MarketSandbox
from stocksync.cli import main
from stocksync.processes import free_port
from tests.integration.drain_support import running_worker
from tests.services import shift_database_clock, wait_for
from worker.metrics import StockFigures
from worker.routing_check import check_routing, last_check, reader_for
from worker.settings import Settings, load_settings

KEY = "discover-test-key"
WITH_GROUPS = {
    "businesses": [
        {
            "id": 902,
            "campaigns": [
                {"id": 2001, "warehouses": [{"id": 21}]},
                {"id": 2002, "placementType": "DBS", "warehouses": [{"id": 22}]},
                {"id": 2003, "warehouses": [{"id": 23, "express": True}]},
                {"id": 2004, "warehouses": [{"id": 24}]},
                {"id": 2005, "warehouses": [{"id": 25}]},
            ],
            "groups": [
                {"id": 55, "name": "North", "warehouses": [21, 22, 23]},
                {"id": 56, "name": "South", "warehouses": [24, 25]},
            ],
        }
    ]
}
WITHOUT_GROUPS = {
    "businesses": [
        {
            "id": 901,
            "campaigns": [
                {"id": 4001, "warehouses": [{"id": 7001}]},
                {"id": 4002, "placementType": "DBS", "warehouses": [{"id": 7002}]},
                {"id": 4003, "warehouses": [{"id": 7003, "express": True}]},
            ],
        }
    ]
}
MIXED = {
    "businesses": [
        *WITH_GROUPS["businesses"],
        *WITHOUT_GROUPS["businesses"],
        {
            "id": 903,
            "campaigns": [{"id": 3001, "placementType": "FBY", "warehouses": [{"id": 31}]}],
        },
    ]
}
V3_OF_WITHOUT = {
    "4001": {"business_id": 901, "warehouse_id": 7001},
    "4002": {"business_id": 901, "warehouse_id": 7002},
    "4003": {"business_id": 901, "warehouse_id": 7003},
}


@pytest.fixture
def market(monkeypatch: pytest.MonkeyPatch) -> Iterator[MarketSandbox]:
    """A sandbox with the Market's real read limits; the settings point at it."""
    with MarketSandbox() as sandbox:
        monkeypatch.setenv("STOCKSYNC_MARKET_BASE_URL", sandbox.url)
        monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", KEY)
        yield sandbox


def discover(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["discover", *args])
    return code, capsys.readouterr().out


def env_lines(out: str) -> dict[str, str]:
    """The `NAME=value` lines of the output (what a .env file would take)."""
    return dict(line.split("=", 1) for line in out.splitlines() if line.startswith("STOCKSYNC_"))


def settings_of(monkeypatch: pytest.MonkeyPatch, lines: dict[str, str]) -> Settings:
    for name, value in lines.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_cabinet_with_groups_prints_its_groups_and_no_v3(
    market: MarketSandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    market.set_accounts(WITH_GROUPS)

    code, out = discover(capsys)

    lines = env_lines(out)
    assert lines.keys() == {"STOCKSYNC_WAREHOUSE_GROUPS", "STOCKSYNC_V3_CAMPAIGNS"}
    settings = settings_of(monkeypatch, lines)
    assert settings.warehouse_groups == [[2001, 2002, 2003], [2004, 2005]]
    assert settings.v3_campaigns == {}
    # Today's settings have no group: every grouped campaign is standalone here.
    assert code == 2
    assert "campaign 2003 is in group 55 at the Market but standalone here" in out
    # With the printed lines in force, the settings match.
    code, out = discover(capsys)
    assert code == 0
    assert "match the Market" in out


def test_cabinet_without_groups_prints_every_campaign_as_v3(
    market: MarketSandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    market.set_accounts(WITHOUT_GROUPS)

    code, out = discover(capsys)

    settings = settings_of(monkeypatch, env_lines(out))
    assert settings.warehouse_groups == []
    assert {c: (t.business_id, t.warehouse_id) for c, t in settings.v3_campaigns.items()} == {
        4001: (901, 7001),
        4002: (901, 7002),
        4003: (901, 7003),
    }
    assert code == 2
    assert "campaign 4001 is sent by v2 here but has no warehouse group at the Market: v3" in out
    assert discover(capsys)[0] == 0


def test_mixed_cabinet_json_has_the_contracts_shape(
    market: MarketSandbox, capsys: pytest.CaptureFixture[str]
) -> None:
    market.set_accounts(MIXED)

    code, out = discover(capsys, "--json")

    found = json.loads(out)
    assert {"warehouse_groups", "v3_campaigns", "differences"} <= found.keys()
    assert found["warehouse_groups"] == [[2001, 2002, 2003], [2004, 2005]]
    assert found["v3_campaigns"] == V3_OF_WITHOUT
    assert all(isinstance(d, str) for d in found["differences"])
    assert code == 2
    # FBY: the Market keeps its stock; neither method, and the output says so.
    assert any("3001 is FBY" in note for note in found["notes"])
    assert "3001" not in found["v3_campaigns"]


def test_groups_keep_todays_first_campaign_first(
    market: MarketSandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    market.set_accounts(WITH_GROUPS)
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[2003, 2001], [2005, 2004]]")

    code, out = discover(capsys, "--json")

    found = json.loads(out)
    assert found["warehouse_groups"] == [[2003, 2001, 2002], [2005, 2004]]
    assert code == 2
    assert found["differences"] == [
        "campaign 2001 is in group 55 [2003, 2001, 2002] at the Market but in group "
        "[2003, 2001] here",
        "campaign 2002 is in group 55 at the Market but standalone here",
        "campaign 2003 is in group 55 [2003, 2001, 2002] at the Market but in group "
        "[2003, 2001] here",
    ]


def test_settings_that_do_not_match_the_market_are_reported(
    market: MarketSandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    market.set_accounts(MIXED)
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[2001, 2002, 2003], [4001, 5]]")
    monkeypatch.setenv(
        "STOCKSYNC_V3_CAMPAIGNS", '{"2004": {"business_id": 902, "warehouse_id": 24}}'
    )

    code, out = discover(capsys, "--json")

    differences = json.loads(out)["differences"]
    assert code == 2
    assert "campaign 5 in STOCKSYNC_WAREHOUSE_GROUPS is not a campaign of this key" in differences
    assert "campaign 2004 is in group 56 at the Market but sent by v3 here" in differences
    assert "campaign 2005 is in group 56 at the Market but standalone here" in differences
    assert (
        "campaign 4001 is in group [4001, 5] here but in no warehouse group at the Market: v3"
        in differences
    )
    assert "campaign 4002 is sent by v2 here but has no warehouse group at the Market: v3" in (
        differences
    )


def test_an_unreachable_market_exits_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", KEY)

    code = main(["discover"])

    captured = capsys.readouterr()
    assert code == 3
    assert "cannot read the Market" in captured.err
    assert KEY not in captured.err + captured.out


def test_a_refused_key_exits_3_and_names_the_call(
    market: MarketSandbox, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    market.set_accounts(MIXED)
    market.configure_read_limits(campaigns_calls=1)
    assert discover(capsys)[0] == 2

    code = main(["discover"])  # the second call of the window: 420

    assert code == 3
    assert "GET /v2/campaigns: HTTP 420" in capsys.readouterr().err


def many_campaigns(count: int) -> dict[str, Any]:
    return {
        "businesses": [
            {
                "id": 900,
                "campaigns": [
                    {"id": 5000 + c, "warehouses": [{"id": 100_000 + c}]} for c in range(count)
                ],
                "groups": [{"id": 77, "warehouses": [100_000, 100_001]}],
            }
        ]
    }


def test_checks_of_an_hour_stay_within_the_read_limits(
    market: MarketSandbox, engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 250 campaigns of one business: 3 pages of campaigns, 10 calls of 25 campaigns' warehouses.
    market.set_accounts(many_campaigns(250))
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", database_url)
    settings = load_settings()

    first = check_routing(engine, settings, reader_for(settings))
    # A restart within the hour under the same settings spends nothing.
    again = check_routing(engine, settings, reader_for(settings), at_start=True)

    assert first is not None
    assert first.readable
    assert again is None
    calls = market.read_calls()
    assert calls == {"getCampaigns": 3, "getPagedWarehouses": 10}
    assert first.calls == 13
    # An hour holds the hourly check and at most one at start: twice one check's calls.
    assert 2 * calls["getCampaigns"] <= 1000
    assert 2 * calls["getPagedWarehouses"] <= 100
    assert "5002 is sent by v2 here" in " ".join(first.differences)


def test_check_at_start_repeats_when_the_settings_changed(
    market: MarketSandbox, engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    market.set_accounts(WITH_GROUPS)
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", database_url)
    before = load_settings()
    assert check_routing(engine, before, reader_for(before)) is not None
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[2001, 2002, 2003], [2004, 2005]]")
    after = load_settings()

    result = check_routing(engine, after, reader_for(after), at_start=True)

    assert result is not None
    assert result.matches is True
    stored = last_check(engine)
    assert stored is not None
    assert stored.differences == []


@pytest.mark.slow
def test_the_service_reports_a_mismatch_in_status_metrics_and_log(
    market: MarketSandbox,
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a Market with group 55 (2001, 2002, 2003) and settings that leave 2003 out
    market.set_accounts(WITH_GROUPS)
    groups = "[[2001, 2002], [2004, 2005]]"
    # When the service starts
    with running_worker(
        database_url, rabbit_url, market, tmp_path / "w.log", warehouse_groups=groups
    ) as worker:
        wait_for("the routing check at start", lambda: last_check(engine) is not None, 60)
        log = worker.log_path.read_text(encoding="utf-8")
    # Then status --json shows the mismatch
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", database_url)
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", groups)
    main(["status", "--json"])
    captured = capsys.readouterr()
    routing = json.loads(captured.out)["routing"]
    assert routing["matches"] is False
    assert (
        "campaign 2003 is in group 55 at the Market but standalone here" in (routing["differences"])
    )
    assert "differ from the Market" in captured.err
    # And the metrics and the log
    samples = {
        family.name: family.samples for family in StockFigures(engine, load_settings()).collect()
    }
    assert samples["stocksync_routing_mismatch"][0].value == len(routing["differences"])
    assert "the settings differ from the Market" in log
    # And routing was not changed: the campaign is still standalone in the settings in force
    assert load_settings().group_of(2003) == 2003
    assert KEY not in log


def test_a_check_is_dated_by_the_database_clock_so_every_host_judges_its_age_alike(
    market: MarketSandbox, engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a database whose clock reads two hours later than this host's (as another host's
    # might: what one host stores, every host compares with its own "now")
    market.set_accounts(WITH_GROUPS)
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL", database_url)
    settings = load_settings()
    shift_database_clock(engine, database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE clockshift.shift SET by = '2 hours'"))
    engine.dispose()  # the new search_path is for connections made from now on
    # When a check runs
    assert check_routing(engine, settings, reader_for(settings)) is not None
    # Then it is dated by the database's clock, not this host's
    stored = last_check(engine)
    assert stored is not None
    with engine.connect() as conn:
        database_now = conn.scalar(text("SELECT clock_timestamp()"))
    assert abs((database_now - stored.checked_at).total_seconds()) < 60
    # and a start right after it (on any host) finds it fresh
    assert check_routing(engine, settings, reader_for(settings), at_start=True) is None
