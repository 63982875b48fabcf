"""Pure rules of the sandbox's read methods: checks, page tokens, answer shapes, the v3 store."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.config import SandboxConfig
from sandbox.read_rules import (
    decode_page_token,
    encode_page_token,
    parse_counts,
    parse_read,
    parse_target,
    parse_time,
    seller_warehouse_id,
    v2_result,
)
from sandbox.rules import RequestRejected
from sandbox.v3 import V3Store

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def rejected(raw: bytes, query: dict[str, list[str]] | None = None, *, v3: bool = False) -> str:
    with pytest.raises(RequestRejected) as caught:
        parse_read(raw, query or {}, v3=v3)
    return caught.value.error.message


def test_no_body_is_a_paged_read_of_100() -> None:
    read = parse_read(b"", {}, v3=False)
    assert (read.offer_ids, read.after, read.limit, read.warehouse) == (None, None, 100, None)


def test_offer_ids_are_trimmed_as_the_put_trims_skus() -> None:
    assert parse_read(b'{"offerIds": [" A ", "B"]}', {}, v3=False).offer_ids == ["A", "B"]


def test_null_offer_ids_means_paged() -> None:
    assert parse_read(b'{"offerIds": null}', {"limit": ["5"]}, v3=False).limit == 5


@pytest.mark.parametrize("size", [0, 501])
def test_offer_ids_outside_1_to_500_are_refused(size: int) -> None:
    raw = ('{"offerIds": [' + ",".join(f'"S{i}"' for i in range(size)) + "]}").encode()
    assert rejected(raw) == f"Field 'offerIds' must contain 1 … 500 items, got {size}"


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten"])
def test_limit_outside_1_to_100_is_refused(limit: str) -> None:
    assert "'limit' must be an integer 1 … 100" in rejected(b"", {"limit": [limit]})


def test_offer_ids_with_paging_are_refused() -> None:
    assert "cannot be combined" in rejected(b'{"offerIds": ["A"]}', {"page_token": ["x"]})


def test_v3_needs_partner_warehouse_id_and_knows_no_v2_filter() -> None:
    assert rejected(b"{}", v3=True) == "Field 'partnerWarehouseId' is required"
    assert rejected(b'{"partnerWarehouseId": 0}', v3=True).startswith(
        "Field 'partnerWarehouseId' must be an integer ≥ 1"
    )
    body = b'{"partnerWarehouseId": 1, "stocksWarehouseId": 2}'
    assert rejected(body, v3=True) == "Unknown field 'stocksWarehouseId' in request"
    assert parse_read(b'{"partnerWarehouseId": 7}', {}, v3=True).warehouse == 7


def test_page_token_round_trips_any_sku_and_refuses_a_foreign_one() -> None:
    for sku in ["A", "ПРИВЕТ", "a b\tc", "x" * 255]:
        assert decode_page_token(encode_page_token(sku)) == sku
    with pytest.raises(RequestRejected):
        decode_page_token("eyJhZnRlciI6IkEifQ")  # valid base64, not this sandbox's
    with pytest.raises(RequestRejected):
        decode_page_token("%%%")


def test_seller_warehouse_is_configured_or_ten_times_the_campaign() -> None:
    config = SandboxConfig().updated({"warehouse_ids": {"5": 77}})
    assert seller_warehouse_id(config, 5) == 77
    assert seller_warehouse_id(config, 6) == 60
    assert seller_warehouse_id(config, 5, listed=8123) == 8123  # the accounts' warehouse first


def test_v2_result_puts_the_returns_warehouse_first_with_other_counts() -> None:
    config = SandboxConfig().updated({"returns_warehouse_campaigns": [5]})
    result = v2_result(config, 5, [("A", 3, AT)], True, None)
    assert [w["warehouseId"] for w in result["warehouses"]] == [900_000_001, 50]
    assert result["warehouses"][0]["offers"][0]["stocks"] == [
        {"type": "FIT", "count": 4},
        {"type": "AVAILABLE", "count": 4},
    ]
    assert result["warehouses"][1]["offers"][0] == {
        "offerId": "A",
        "updatedAt": "2026-12-01T12:00:00+00:00",
        "stocks": [{"type": "FIT", "count": 3}, {"type": "AVAILABLE", "count": 3}],
    }
    assert decode_page_token(result["paging"]["nextPageToken"]) == "A"
    assert v2_result(config, 5, [], False, None) == {"paging": {}, "warehouses": []}
    assert [
        w["warehouseId"] for w in v2_result(config, 5, [("A", 3, AT)], False, 50)["warehouses"]
    ] == [50]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "field 'campaign' (v2) or 'business' and 'partnerWarehouseId' (v3) required"),
        ({"business": 1}, "field 'partnerWarehouseId' must be an integer ≥ 1, got None"),
        ({"campaign": True}, "field 'campaign' must be an integer ≥ 1, got True"),
        ({"campaign": 1, "sku": "A"}, "unknown field 'sku'"),
    ],
)
def test_control_target_names_the_bad_field(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_target(body, frozenset({"skus"}))


def test_drift_counts_and_time_are_checked() -> None:
    assert parse_counts({" A ": 0}) == {"A": 0}
    for bad in [{}, {"A": -1}, {"A": 2_000_000_001}, {"A": "1"}, ["A"]]:
        with pytest.raises(ValueError, match="field 'skus'"):
            parse_counts(bad)
    assert parse_time("2026-12-01T12:00:00+03:00").utcoffset() is not None
    with pytest.raises(ValueError, match="field 'updatedAt'"):
        parse_time("2026-12-01T12:00:00")


def test_v3_store_pages_in_sku_order_and_forgets_dropped_skus() -> None:
    store = V3Store()
    assert store.write(1, 10, [("B", 2, AT), ("A", 1, AT), ("C", 3, AT)]) == 3
    store.write(1, 11, [("A", 9, AT)])
    page, more = store.page(1, 10, None, 2)
    assert ([s for s, _, _ in page], more) == (["A", "B"], True)
    page, more = store.page(1, 10, "B", 2)
    assert ([s for s, _, _ in page], more) == (["C"], False)
    assert store.drop(1, 10, ["A", "Z"]) == 1
    assert store.read(1, 10, ["C", "A"]) == [("C", 3, AT)]
    assert store.read(1, 11, ["A"]) == [("A", 9, AT)]
    held = store.snapshot(1)["1"]["10"]["B"]
    assert (held["count"], held["updatedAt"]) == (2, AT.isoformat())
