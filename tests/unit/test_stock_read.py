"""The verify sweep's pure rules: answers parsed, the campaign's warehouse chosen, the pace."""

from datetime import UTC, datetime

import pytest

from domain.stock_read import (
    AnswerError,
    DriftKind,
    MarketStock,
    UnknownWarehouse,
    check_keys,
    own_warehouse,
    parse_v3_offers,
    parse_warehouses,
    sweep_allowance,
)


def test_the_count_is_the_configured_types_in_each_warehouse() -> None:
    body = {
        "result": {
            "warehouses": [
                {
                    "warehouseId": 1,
                    "offers": [
                        {
                            "offerId": "A",
                            "updatedAt": "2026-12-01T10:00:00+00:00",
                            "stocks": [
                                {"type": "FIT", "count": 3},
                                {"type": "AVAILABLE", "count": 2},
                            ],
                        }
                    ],
                }
            ]
        }
    }
    parsed = parse_warehouses(body, "AVAILABLE")
    assert parsed == {1: {"A": MarketStock(2, datetime(2026, 12, 1, 10, tzinfo=UTC))}}


def test_the_v3_answer_is_the_offers_of_the_partner_warehouse_asked_for() -> None:
    offer = {"offerId": "A", "stocks": [{"type": "AVAILABLE", "count": 4}]}
    body = {"result": {"partnerWarehouseId": 7001, "offers": [offer]}}
    assert parse_v3_offers(body, 7001, "AVAILABLE") == {"A": MarketStock(4, None)}
    assert parse_v3_offers(body, 7001, "FIT") == {"A": MarketStock(None, None)}
    with pytest.raises(AnswerError, match="partnerWarehouseId"):
        parse_v3_offers(body, 7002, "AVAILABLE")
    with pytest.raises(AnswerError, match="offerId"):
        parse_v3_offers({"result": {"partnerWarehouseId": 1, "offers": [{}]}}, 1, "FIT")


def test_several_warehouses_and_none_known_cannot_be_told() -> None:
    places: dict[int, dict[str, MarketStock]] = {1: {}, 2: {}}
    assert own_warehouse(places, 2) == 2
    assert own_warehouse({5: {}}, None) == 5
    assert own_warehouse({}, None) is None
    with pytest.raises(UnknownWarehouse):
        own_warehouse(places, None)


def test_missing_and_other_counts_drift_negatives_compare_as_sent() -> None:
    checks = check_keys(
        [("A", 1), ("B", 2), ("C", -5)],
        {"A": MarketStock(1, None), "B": MarketStock(3, None), "C": MarketStock(0, None)},
    )
    assert [c.drift for c in checks] == [None, DriftKind.COUNT, None]
    assert check_keys([("D", 1)], {})[0].drift is DriftKind.MISSING


def test_a_round_is_paced_and_reads_late_keys_once_the_pace_is_spent() -> None:
    assert sweep_allowance(100, 0, 0, 3600) == 0
    assert sweep_allowance(100, 0, 0.9 * 1800, 3600) == 50
    assert sweep_allowance(100, 50, 0.9 * 1800, 3600) == 0
    # All counted keys read, the period's pace spent: a key pending at the count still gets read.
    assert sweep_allowance(19, 19, 3600, 3600) == 500
