"""Pure rules of the sandbox's v3 body, accounts book and paging."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from sandbox.accounts import (
    PageError,
    decode_token,
    encode_token,
    page,
    page_params,
    parse_accounts,
    partner_warehouses_answer,
)
from sandbox.config import ConfigError
from sandbox.rules import RequestRejected
from sandbox.v3 import V3Settings, decode_v3_body, items_per_warehouse, validate_v3_items

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def item(sku: str, warehouse: object = 1, count: object = 1, **extra: object) -> dict[str, object]:
    return {"sku": sku, "partnerWarehouseId": warehouse, "count": count, **extra}


def test_decode_refuses_a_body_past_512_kb() -> None:
    raw = b'{"skuItems": [' + b" " * (512 * 1024) + b"]}"
    with pytest.raises(RequestRejected, match="exceeds the limit of 524288"):
        decode_v3_body(raw)


def test_decode_accepts_1_and_2000_items_and_refuses_2001() -> None:
    assert len(decode_v3_body(json.dumps({"skuItems": [item("A")]}).encode())) == 1
    assert len(decode_v3_body(json.dumps({"skuItems": [item("A")] * 2000}).encode())) == 2000
    with pytest.raises(RequestRejected, match="1 … 2000 items, got 2001"):
        decode_v3_body(json.dumps({"skuItems": [item("A")] * 2001}).encode())


def test_duplicate_pair_is_one_error_and_refuses_every_occurrence() -> None:
    result = validate_v3_items([item("A", 1), item("A", 1), item("A", 2)], NOW, 9, None)
    assert [e.message for e in result.errors] == ["Duplicate shop-sku 'A' for warehouse '1'"]
    assert [(u.warehouse, u.sku) for u in result.updates] == [(2, "A")]


def test_unknown_warehouse_is_named_once() -> None:
    result = validate_v3_items([item("A", 5), item("B", 5), item("C", 1)], NOW, 9, frozenset({1}))
    assert [e.message for e in result.errors] == [
        "Warehouse '5' is not a warehouse of businessId 9"
    ]
    assert [u.sku for u in result.updates] == ["C"]


def test_updated_at_window_is_v2s() -> None:
    ok = validate_v3_items(
        [item("A", updatedAt=(NOW - timedelta(hours=23)).isoformat())], NOW, 9, None
    )
    assert ok.errors == []
    assert ok.updates[0].updated_at == NOW - timedelta(hours=23)
    late = validate_v3_items(
        [item("A", updatedAt=(NOW + timedelta(seconds=1)).isoformat())], NOW, 9, None
    )
    assert [e.message for e in late.errors] == ["Stock for 'A' should not be in the future"]


@pytest.mark.parametrize("count", [-1, 2_000_000_001, 2.0, False])
def test_count_must_be_an_integer_0_to_2e9(count: object) -> None:
    result = validate_v3_items([item("A", count=count)], NOW, 9, None)
    assert result.updates == []
    assert "invalid count" in result.errors[0].message


def test_items_per_warehouse_counts_what_was_sent() -> None:
    assert items_per_warehouse(
        [item("A", 1), item("B", 1), item("C", 2), "junk", item("D", "x")]
    ) == {
        "1": 2,
        "2": 1,
    }


def test_v3_settings_refuse_unknown_and_bad_values() -> None:
    assert V3Settings().updated({"requests_per_minute": None}).requests_per_minute is None
    with pytest.raises(ConfigError, match="unknown v3 setting 'rpm'"):
        V3Settings().updated({"rpm": 1})
    with pytest.raises(ConfigError, match="'window_seconds'"):
        V3Settings().updated({"window_seconds": 0})


def test_v3_forced_statuses_are_per_business_and_checked() -> None:
    settings = V3Settings().updated({"forced_status": {"901": 403, 902: 404}})
    assert settings.forced_status == {901: 403, 902: 404}
    assert settings.as_json()["forced_status"] == {"901": 403, "902": 404}
    assert V3Settings().updated({"forced_status": {}}).forced_status == {}
    with pytest.raises(ConfigError, match=r"'forced_status'.*400"):
        V3Settings().updated({"forced_status": {"901": 200}})
    with pytest.raises(ConfigError, match="'forced_status'"):
        V3Settings().updated({"forced_status": [901]})


def test_tokens_round_trip_and_foreign_ones_are_refused() -> None:
    assert decode_token(encode_token(230)) == 230
    for bad in ("@@", encode_token(0)[:-2] + "zz", "eyJ4IjogMX0"):
        with pytest.raises(PageError):
            decode_token(bad)


def test_page_params_default_and_bounds() -> None:
    assert page_params({}, 30, 15) == (0, 15)
    assert page_params({"page_token": [encode_token(30)], "limit": ["30"]}, 30, 15) == (30, 30)
    with pytest.raises(PageError, match="1 … 30, got 31"):
        page_params({"limit": ["31"]}, 30, 15)


def test_last_page_has_no_next_token() -> None:
    items = list(range(5))
    assert page(items, 0, 3) == ([0, 1, 2], {"nextPageToken": encode_token(3)})
    assert page(items, 3, 3) == ([3, 4], {})


def test_accounts_groups_mark_their_warehouses() -> None:
    book = parse_accounts(
        {
            "businesses": [
                {
                    "id": 1,
                    "campaigns": [{"id": 10, "warehouses": [{"id": 100}, {"id": 101}]}],
                    "groups": [{"id": 7, "name": "G", "warehouses": [100]}],
                }
            ]
        }
    )
    business = book.businesses[1]
    assert [w.group for w in business.warehouses] == [(7, "G"), None]
    assert book.warehouse_ids(1) == frozenset({100, 101})
    assert book.warehouse_ids(2) is None
    v3 = partner_warehouses_answer(business, {}, 0, 30)["result"]["warehouses"]
    assert [w["id"] for w in v3] == [101]
    assert parse_accounts(book.as_json()) == book


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ([], "accounts: an object"),
        ({"businesses": [{"id": 1}, {"id": 1}]}, "business 1 is listed twice"),
        (
            {
                "businesses": [
                    {"id": 1, "campaigns": [{"id": 2}]},
                    {"id": 3, "campaigns": [{"id": 2}]},
                ]
            },
            "campaign 2 is listed twice",
        ),
        (
            {
                "businesses": [
                    {
                        "id": 1,
                        "campaigns": [{"id": 2, "warehouses": [{"id": 3}]}],
                        "groups": [{"id": 4, "warehouses": [3]}, {"id": 5, "warehouses": [3]}],
                    }
                ]
            },
            "warehouse 3 is in two groups",
        ),
        (
            {"businesses": [{"id": 1, "campaigns": [{"id": 2, "apiAvailability": "ON"}]}]},
            "businesses[0].campaigns[0].apiAvailability",
        ),
    ],
)
def test_accounts_errors_name_the_field_and_rule(raw: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_accounts(raw)
