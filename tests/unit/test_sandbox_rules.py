"""The sandbox's pure request rules, window arithmetic and settings, without HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandbox.config import ConfigError, SandboxConfig
from sandbox.rules import (
    RequestRejected,
    StockUpdate,
    decode_body,
    parse_campaign_id,
    validate_skus,
)
from sandbox.state import RollingWindow

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def entry(sku: Any, count: Any = 1, **item: Any) -> dict[str, Any]:
    return {"sku": sku, "items": [{"count": count, **item}]}


def test_valid_entries_become_updates_with_trimmed_sku_and_parsed_time() -> None:
    result = validate_skus(
        [entry(" A ", 5, updatedAt="2026-11-28T14:00:00+03:00"), entry("B", 0)], NOW, 1
    )
    assert result.errors == []
    assert result.updates == [
        StockUpdate("A", 5, datetime(2026, 11, 28, 11, 0, tzinfo=UTC)),
        StockUpdate("B", 0, None),
    ]


def test_duplicates_after_trimming_refuse_every_occurrence_once() -> None:
    result = validate_skus([entry("A"), entry("A "), entry("B"), entry(" A")], NOW, 77)
    assert [u.sku for u in result.updates] == ["B"]
    assert [e.message for e in result.errors] == ["Duplicate shop-sku 'A' for warehouse '77'"]
    assert result.bad_skus == ["A"]


@pytest.mark.parametrize(
    "sku", ["", "   ", "a\x00b", "a\nb", "a\x1fb", "a\x7fb", "x" * 256, 5, None]
)
def test_sku_outside_the_market_pattern_is_an_error(sku: Any) -> None:
    result = validate_skus([entry(sku)], NOW, 1)
    assert result.updates == []
    assert len(result.errors) == 1


@pytest.mark.parametrize("sku", ["x" * 255, "a\tb", "Артикул-1", "0557722", "a b"])
def test_sku_inside_the_market_pattern_is_accepted(sku: str) -> None:
    assert validate_skus([entry(sku)], NOW, 1).errors == []


@pytest.mark.parametrize("count", [-1, 2_000_000_001, 1.0, "5", True, False, None])
def test_count_must_be_an_integer_within_range(count: Any) -> None:
    result = validate_skus([entry("A", count)], NOW, 1)
    assert result.updates == []
    assert "'A'" in result.errors[0].message


@pytest.mark.parametrize("count", [0, 2_000_000_000])
def test_count_range_bounds_are_accepted(count: int) -> None:
    assert validate_skus([entry("A", count)], NOW, 1).updates[0].count == count


@pytest.mark.parametrize(
    ("updated_at", "message"),
    [
        ((NOW + timedelta(seconds=1)).isoformat(), "Stock for 'A' should not be in the future"),
        (
            (NOW - timedelta(days=1, seconds=1)).isoformat(),
            "Stock for 'A' should not be older than a day",
        ),
    ],
)
def test_updated_at_outside_the_day_window_is_refused(updated_at: str, message: str) -> None:
    result = validate_skus([entry("A", updatedAt=updated_at)], NOW, 1)
    assert [e.message for e in result.errors] == [message]


@pytest.mark.parametrize(
    "updated_at",
    ["2026-11-28T11:00:00", "2026-11-28", "20261128T110000Z", "2026-11-28 11:00:00Z", 17, ""],
)
def test_updated_at_must_be_a_date_time_with_offset(updated_at: Any) -> None:
    result = validate_skus([entry("A", updatedAt=updated_at)], NOW, 1)
    assert result.updates == []
    assert "updatedAt" in result.errors[0].message


def test_updated_at_bounds_now_and_a_day_ago_are_accepted() -> None:
    for moment in (NOW, NOW - timedelta(days=1)):
        result = validate_skus([entry("A", updatedAt=moment.isoformat())], NOW, 1)
        assert result.errors == []


@pytest.mark.parametrize(
    "bad",
    [
        {"sku": "A", "warehouseId": 1, "items": [{"count": 1}]},
        {"sku": "A", "items": [{"count": 1, "type": "FIT"}]},
        {"sku": "A", "items": []},
        {"sku": "A", "items": [{"count": 1}, {"count": 2}]},
        {"sku": "A", "items": [{}]},
        {"sku": "A"},
        "A",
    ],
)
def test_malformed_entry_is_an_error_of_its_own(bad: Any) -> None:
    result = validate_skus([bad, entry("B")], NOW, 1)
    assert [u.sku for u in result.updates] == ["B"]
    assert len(result.errors) == 1


@pytest.mark.parametrize("size", [0, 2001])
def test_number_of_entries_out_of_range_rejects_the_request(size: int) -> None:
    with pytest.raises(RequestRejected):
        validate_skus([entry(f"S{i}") for i in range(size)], NOW, 1)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"skus": {}}',
        b'{"skus": [], "warehouseId": 1}',
        b"\xff",
        b" " * (512 * 1024 + 1),
    ],
)
def test_body_level_problems_reject_the_request(raw: bytes) -> None:
    with pytest.raises(RequestRejected):
        decode_body(raw)


def test_body_of_exactly_512_kb_is_decoded() -> None:
    raw = json.dumps({"skus": [entry("A")]}).encode()
    assert decode_body(raw.ljust(512 * 1024)) == [entry("A")]


@pytest.mark.parametrize(("raw", "expected"), [("1", 1), ("1001", 1001), ("0", None), ("-1", None)])
def test_campaign_id_is_an_integer_of_at_least_one(raw: str, expected: int | None) -> None:
    assert parse_campaign_id(raw) == expected


def test_campaign_id_rejects_non_digits() -> None:
    assert parse_campaign_id("abc") is None
    assert parse_campaign_id("\uff11") is None  # a fullwidth digit one is no ASCII integer


def test_rolling_window_forgets_amounts_once_they_are_window_old() -> None:
    window = RollingWindow()
    window.add(0.0, 10)
    window.add(30.0, 5)
    window.purge(59.9, 60.0)
    assert window.total == 15
    window.purge(60.0, 60.0)
    assert window.total == 5
    assert window.oldest_leaves(60.0, 60.0) == 90.0


def test_rolling_window_tells_when_enough_has_left() -> None:
    window = RollingWindow()
    window.add(0.0, 10)
    window.add(30.0, 5)
    assert window.time_until_free(40.0, 60.0, 10) == 60.0
    assert window.time_until_free(40.0, 60.0, 11) == 90.0


def test_config_updates_convert_json_values() -> None:
    config = SandboxConfig().updated(
        {"forced_status": {"5": 403}, "known_campaigns": [1, 2], "refuse_skus": [" BAD-1 "]}
    )
    assert config.forced_status == {5: 403}
    assert config.known_campaigns == frozenset({1, 2})
    assert config.refuse_skus == frozenset({"BAD-1"})
    assert config.as_json()["forced_status"] == {"5": 403}


@pytest.mark.parametrize(
    "changes",
    [
        {"no_such_setting": 1},
        {"error_500_rate": 1.5},
        {"partial_400": "yes"},
        {"rate_limit_skus_per_minute": 0},
        {"rate_limit_skus_per_minute": True},
        {"forced_status": {"5": 200}},
        {"request_log_max": 0},
    ],
)
def test_config_refuses_unknown_settings_and_bad_values(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SandboxConfig().updated(changes)
