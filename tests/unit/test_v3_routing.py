"""v3 routes, the v3 body's packing and the naming of v3 items in a 400."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from domain.batching import pack_v3, take_turns, v3_item_bytes
from domain.market_payload import PendingStock, v3_stocks_body
from domain.market_rules import BODY_BYTES_MAX, items_named
from domain.route import Method, Route, Routing, V3Destination

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_route_keys_tell_a_campaign_from_a_business() -> None:
    assert Route(Method.V2, 1001).key == 1001
    assert Route(Method.V3, 901).key == -901
    assert Route.of_key(-901) == Route(Method.V3, 901)
    assert Route.of_key(1001) == Route(Method.V2, 1001)


def test_routing_sends_configured_campaigns_by_v3_and_knows_stale_routes() -> None:
    routing = Routing({4002: V3Destination(901, 7002), 4001: V3Destination(901, 7001)})
    assert routing.route_of(4001) == Route(Method.V3, 901)
    assert routing.route_of(1001) == Route(Method.V2, 1001)
    assert routing.campaigns_of(901) == [4001, 4002]
    assert not routing.is_current(Route(Method.V2, 4001))  # moved to v3
    assert not routing.is_current(Route(Method.V3, 902))
    assert routing.is_current(Route(Method.V3, 901))


def test_turns_are_fair_across_sources_and_oldest_first_within_each() -> None:
    # Three warehouses: A has few, B and C many; ages given out of order, ties within A.
    candidates = [("A", 5, "a1"), ("A", 5, "a2"), ("B", 3, "b2"), ("B", 1, "b1"), ("B", 9, "b3")]
    candidates += [("C", 2, f"c{i}") for i in range(1, 5)]
    assert take_turns(candidates, 6) == ["b1", "c1", "a1", "c2", "b2", "a2"]
    taken = take_turns(candidates, 100)
    assert sorted(taken) == sorted(item for *_, item in candidates)
    assert take_turns([], 10) == []
    assert take_turns(candidates, 0) == []


def test_v3_packing_keeps_2000_items_and_512_kb() -> None:
    short = [(f"S{i}", 7001) for i in range(4500)]
    assert [len(b) for b in pack_v3(short)] == [2000, 2000, 500]
    long = [("x" * 255 + str(i), 7001) for i in range(2000)]
    batches = pack_v3(long)
    assert len(batches) == 2
    for batch in batches:
        stocks = [PendingStock(long[i][0], 2_000_000_000, 1, NOW, group_id=4001) for i in batch]
        body = v3_stocks_body([(s, 7001) for s in stocks], NOW)
        assert len(body) <= BODY_BYTES_MAX
        assert len(body) <= 15 + sum(v3_item_bytes(s.sku, 7001) for s in stocks)


def test_v3_body_has_exactly_the_contract_fields() -> None:
    body = json.loads(v3_stocks_body([(PendingStock("A", -3, 1, NOW, group_id=4001), 7001)], NOW))
    assert body == {
        "skuItems": [
            {"sku": "A", "partnerWarehouseId": 7001, "count": 0, "updatedAt": NOW.isoformat()}
        ]
    }


def test_a_400_names_the_item_by_sku_and_warehouse() -> None:
    items = {"4001/A": ("A", 7001), "4002/A": ("A", 7002), "4001/B": ("B", 7001)}
    duplicate = ["Duplicate shop-sku 'A' for warehouse '7002'"]
    assert set(items_named(duplicate, items)) == {"4002/A"}
    assert set(items_named(["Stock for 'A' should not be in the future"], items)) == {
        "4001/A",
        "4002/A",
    }
    unknown = ["Warehouse '7001' is not a warehouse of businessId 901"]
    assert set(items_named(unknown, items)) == {"4001/A", "4001/B"}
