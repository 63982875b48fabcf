"""Discovery: the groups and v3 campaigns the Market's answers imply, and today's differences."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from domain.discovery import MarketCampaign, MarketWarehouse, V3Route, discover

GROUPED = [MarketCampaign(2001, 902, "FBS"), MarketCampaign(2002, 902, "FBS")]
GROUPED += [MarketCampaign(2003, 902, "DBS")]
GROUP_WAREHOUSES = [
    MarketWarehouse(21, 2001, 55, "North"),
    MarketWarehouse(22, 2002, 55, "North"),
    MarketWarehouse(23, 2003, 55, "North"),
]
STANDALONE = [MarketCampaign(4001, 901, "FBS"), MarketCampaign(4002, 901, "DBS")]
STANDALONE_WAREHOUSES = [MarketWarehouse(7001, 4001), MarketWarehouse(7002, 4002)]


def test_warehouses_sharing_a_group_id_make_one_group_in_the_markets_order() -> None:
    found = discover(GROUPED, GROUP_WAREHOUSES, [], {})

    assert found.warehouse_groups == [[2001, 2002, 2003]]
    assert found.v3_campaigns == {}


def test_a_todays_groups_first_campaign_stays_first() -> None:
    found = discover(GROUPED, GROUP_WAREHOUSES, [[2002, 2001]], {})

    assert found.warehouse_groups[0][0] == 2002
    assert found.warehouse_groups == [[2002, 2001, 2003]]
    assert found.differences == [
        "campaign 2001 is in group 55 [2002, 2001, 2003] at the Market but in group "
        "[2002, 2001] here",
        "campaign 2002 is in group 55 [2002, 2001, 2003] at the Market but in group "
        "[2002, 2001] here",
        "campaign 2003 is in group 55 at the Market but standalone here",
    ]


def test_matching_groups_in_another_order_are_no_difference() -> None:
    found = discover(GROUPED, GROUP_WAREHOUSES, [[2003, 2001, 2002]], {})

    assert found.differences == []
    assert found.warehouse_groups == [[2003, 2001, 2002]]


def test_ungrouped_fbs_and_dbs_campaigns_go_by_v3_to_their_warehouse() -> None:
    found = discover(STANDALONE, STANDALONE_WAREHOUSES, [], {})

    assert found.warehouse_groups == []
    assert found.v3_campaigns == {4001: V3Route(901, 7001), 4002: V3Route(901, 7002)}
    assert found.as_json()["v3_campaigns"] == {
        "4001": {"business_id": 901, "warehouse_id": 7001},
        "4002": {"business_id": 901, "warehouse_id": 7002},
    }
    assert "campaign 4001 is sent by v2 here but has no warehouse group at the Market: v3" in (
        found.differences
    )


def test_settings_matching_the_market_have_no_difference() -> None:
    today_v3 = {4001: V3Route(901, 7001), 4002: V3Route(901, 7002)}
    found = discover(
        GROUPED + STANDALONE,
        GROUP_WAREHOUSES + STANDALONE_WAREHOUSES,
        [[2001, 2002, 2003]],
        today_v3,
    )

    assert found.differences == []


def test_fby_and_laas_campaigns_are_neither_v2_nor_v3_and_say_so() -> None:
    campaigns = [MarketCampaign(3001, 903, "FBY"), MarketCampaign(3002, 903, "LAAS")]
    found = discover(campaigns, [MarketWarehouse(31, 3001)], [], {})

    assert found.v3_campaigns == {}
    assert found.differences == []
    assert any("3001 is FBY" in note and "neither" in note for note in found.notes)
    assert any("3002 is LAAS" in note for note in found.notes)


def test_campaigns_in_settings_the_key_does_not_have_are_differences() -> None:
    found = discover(STANDALONE, STANDALONE_WAREHOUSES, [[5, 6]], {7: V3Route(1, 2)})

    assert "campaign 5 in STOCKSYNC_WAREHOUSE_GROUPS is not a campaign of this key" in (
        found.differences
    )
    assert "campaign 7 in STOCKSYNC_V3_CAMPAIGNS is not a campaign of this key" in (
        found.differences
    )


def test_a_grouped_campaign_sent_by_v3_here_is_a_difference() -> None:
    found = discover(GROUPED, GROUP_WAREHOUSES, [[2001, 2002]], {2003: V3Route(902, 23)})

    assert "campaign 2003 is in group 55 at the Market but sent by v3 here" in found.differences


def test_a_v3_campaign_with_another_warehouse_at_the_market_is_a_difference() -> None:
    found = discover(STANDALONE, STANDALONE_WAREHOUSES, [], {4001: V3Route(901, 7999)})

    assert (
        "campaign 4001 goes to business 901 warehouse 7999 here but the Market has business 901 "
        "warehouse 7001" in found.differences
    )


def test_a_group_here_that_the_market_does_not_have_is_a_difference() -> None:
    found = discover(STANDALONE, STANDALONE_WAREHOUSES, [[4001, 4002]], {})

    assert (
        "campaign 4001 is in group [4001, 4002] here but in no warehouse group at the Market: v3"
        in found.differences
    )
    assert found.v3_campaigns.keys() == {4001, 4002}


def test_v3_campaign_the_market_keeps_stock_for_is_a_difference() -> None:
    found = discover([MarketCampaign(3001, 903, "FBY")], [], [], {3001: V3Route(903, 31)})

    assert any(
        d.startswith("campaign 3001 is in STOCKSYNC_V3_CAMPAIGNS") for d in found.differences
    )


# Cabinets: up to 4 groups of campaigns 1..30, the rest standalone FBS.
@st.composite
def cabinets(draw: st.DrawFn) -> tuple[list[MarketCampaign], list[MarketWarehouse]]:
    ids = draw(st.lists(st.integers(1, 30), min_size=1, max_size=12, unique=True))
    group_of = {c: draw(st.one_of(st.none(), st.integers(1, 4))) for c in ids}
    campaigns = [MarketCampaign(c, 900, "FBS") for c in ids]
    warehouses = [MarketWarehouse(1000 + c, c, group_of[c]) for c in ids]
    return campaigns, warehouses


@given(cabinets(), st.randoms(use_true_random=False))
def test_discovered_settings_match_the_market_and_keep_todays_firsts(
    cabinet: tuple[list[MarketCampaign], list[MarketWarehouse]], rng: random.Random
) -> None:
    campaigns, warehouses = cabinet
    first = discover(campaigns, warehouses, [], {})
    # Today's groups: the discovered ones, each reshuffled; their firsts must stay first.
    today = [list(group) for group in first.warehouse_groups]
    for group in today:
        rng.shuffle(group)

    again = discover(campaigns, warehouses, today, first.v3_campaigns)

    assert again.differences == []
    assert [g[0] for g in again.warehouse_groups] == [g[0] for g in today]
    grouped = [c for g in again.warehouse_groups for c in g]
    assert len(grouped) == len(set(grouped))
    assert set(grouped).isdisjoint(again.v3_campaigns)
    assert set(grouped) | set(again.v3_campaigns) == {c.id for c in campaigns}
