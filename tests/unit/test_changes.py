"""Validation of `stocks.submit` messages, rule by rule (CONTRACT.md section 1, the change table).

Every refusal must say which field broke which rule; the valid changes of a message survive.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.changes import (
    Change,
    UnreadableMessage,
    parse_message,
    read_changes,
    validate_change,
)
from tests.unit import change_examples as ex
from tests.unit.change_examples import NOW, change, without


def accepted(raw: Any) -> Change:
    result = validate_change(raw, NOW)
    assert isinstance(result, Change), f"expected {raw!r} to be accepted, got: {result}"
    return result


def refused(raw: Any) -> str:
    result = validate_change(raw, NOW)
    assert isinstance(result, str), f"expected {raw!r} to be refused, got {result!r}"
    return result


# --- the contract's own example -------------------------------------------------------------


def test_the_contract_example_changes_are_accepted() -> None:
    first = accepted(ex.CONTRACT_DELTA)
    second = accepted(ex.CONTRACT_COUNT)
    assert (first.campaign_id, first.sku, first.delta, first.count) == (1001, "A-100", -2, None)
    assert first.event_id == "order-77:line-1"
    assert first.occurred_at == datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
    assert (second.sku, second.count, second.delta) == ("0557722", 40, None)


# --- campaign_id ----------------------------------------------------------------------------


def test_campaign_id_is_required() -> None:
    assert refused(ex.NO_CAMPAIGN_ID) == "campaign_id: is required"


@pytest.mark.parametrize("value", ex.CAMPAIGN_ID_NOT_INTEGER, ids=repr)
def test_campaign_id_must_be_an_integer_not_bool_float_or_numeric_string(value: Any) -> None:
    reason = refused(change(campaign_id=value))
    assert reason.startswith("campaign_id: ")
    assert "must be an integer" in reason


@pytest.mark.parametrize("value", ex.CAMPAIGN_ID_BELOW_ONE)
def test_campaign_id_below_one_is_refused(value: int) -> None:
    assert refused(change(campaign_id=value)) == "campaign_id: must be ≥ 1"


def test_campaign_id_one_is_the_smallest_accepted() -> None:
    assert accepted(ex.CAMPAIGN_ID_SMALLEST).campaign_id == 1


def test_campaign_id_too_large_for_64_bits_is_refused_not_crashing_the_store() -> None:
    # Given a campaign id PostgreSQL's bigint cannot hold
    # Then it is refused here, naming the field, instead of failing the whole message later
    assert accepted(ex.CAMPAIGN_ID_LARGEST).campaign_id == 2**63 - 1
    reason = refused(ex.CAMPAIGN_ID_BEYOND_64_BITS)
    assert reason.startswith("campaign_id: must be at most")


# --- sku ------------------------------------------------------------------------------------


def test_sku_is_required() -> None:
    assert refused(ex.NO_SKU) == "sku: is required"


@pytest.mark.parametrize("value", ex.SKU_NOT_STRING, ids=repr)
def test_sku_must_be_a_string(value: Any) -> None:
    assert refused(change(sku=value)) == "sku: must be a string"


@pytest.mark.parametrize(
    ("raw", "normalized"),
    ex.SKU_TRIMMED,
)
def test_sku_is_trimmed_and_otherwise_kept_exactly(raw: str, normalized: str) -> None:
    assert accepted(change(sku=raw)).sku == normalized


def test_sku_leading_zeros_and_case_are_kept() -> None:
    assert accepted(change(sku="0557722")).sku != accepted(change(sku="557722")).sku
    assert accepted(change(sku="Abc")).sku != accepted(change(sku="abc")).sku


@pytest.mark.parametrize("value", ex.SKU_EMPTY_OR_WHITESPACE, ids=repr)
def test_sku_empty_or_whitespace_only_is_refused(value: str) -> None:
    assert refused(change(sku=value)) == "sku: must not be empty or only whitespace"


@pytest.mark.parametrize("value", ex.SKU_CONTROL_CHARACTERS, ids=repr)
def test_sku_with_control_characters_breaks_the_market_pattern(value: str) -> None:
    reason = refused(change(sku=value))
    assert reason.startswith("sku: must match the Market pattern ")
    assert "^(?=.*\\S.*)[^\\x00-\\x08\\x0A-\\x1f\\x7f]{1,255}$" in reason


def test_sku_with_a_tab_inside_matches_the_market_pattern() -> None:
    assert accepted(change(sku=ex.SKU_TAB_INSIDE)).sku == "A\tB"


def test_sku_of_255_characters_after_trimming_is_accepted() -> None:
    sku = "x" * 255
    assert accepted(change(sku=ex.SKU_255_PADDED)).sku == sku


def test_sku_longer_than_255_characters_after_trimming_is_refused() -> None:
    reason = refused(change(sku=ex.SKU_256))
    assert reason == "sku: must be at most 255 characters after trimming"


def test_sku_unicode_characters_count_as_characters_not_bytes() -> None:
    sku = "ё" * 255  # 510 bytes in UTF-8, 255 characters
    assert accepted(change(sku=ex.SKU_255_CYRILLIC)).sku == sku


def test_sku_with_a_lone_surrogate_is_refused_as_not_text() -> None:
    # JSON may carry "\ud800"; such a string cannot be stored or sent as UTF-8
    reason = refused(change(sku=ex.SKU_LONE_SURROGATE))
    assert reason.startswith("sku: ")
    assert "Unicode" in reason


# --- delta and count ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ex.DELTA_WITHIN)
def test_delta_within_two_billion_either_way_is_accepted(value: int) -> None:
    assert accepted(change(delta=value)).delta == value


@pytest.mark.parametrize("value", ex.DELTA_BEYOND)
def test_delta_beyond_two_billion_is_refused(value: int) -> None:
    assert refused(change(delta=value)) == "delta: |delta| must be ≤ 2,000,000,000"


@pytest.mark.parametrize("value", ex.DELTA_NOT_INTEGER, ids=repr)
def test_delta_must_be_an_integer_not_bool_float_or_numeric_string(value: Any) -> None:
    reason = refused(change(delta=value))
    assert reason.startswith("delta: must be an integer")


@pytest.mark.parametrize("value", ex.COUNT_WITHIN)
def test_count_from_zero_to_two_billion_is_accepted(value: int) -> None:
    result = accepted(without("delta", count=value))
    assert (result.count, result.delta) == (value, None)


@pytest.mark.parametrize("value", ex.COUNT_OUTSIDE)
def test_count_outside_zero_to_two_billion_is_refused(value: int) -> None:
    assert refused(without("delta", count=value)) == "count: must be between 0 and 2,000,000,000"


@pytest.mark.parametrize("value", ex.COUNT_NOT_INTEGER, ids=repr)
def test_count_must_be_an_integer_not_bool_float_or_numeric_string(value: Any) -> None:
    assert refused(without("delta", count=value)).startswith("count: must be an integer")


def test_delta_and_count_together_are_refused() -> None:
    reason = refused(ex.DELTA_AND_COUNT)
    assert reason == "delta/count: exactly one of delta and count is required"


def test_neither_delta_nor_count_is_refused() -> None:
    reason = refused(ex.NEITHER_DELTA_NOR_COUNT)
    assert reason == "delta/count: exactly one of delta and count is required"


def test_explicit_null_delta_with_a_count_is_accepted() -> None:
    assert accepted(ex.NULL_DELTA_WITH_COUNT).count == 3


# --- event_id -------------------------------------------------------------------------------


def test_event_id_is_optional() -> None:
    assert accepted(change()).event_id is None


@pytest.mark.parametrize("length", ex.EVENT_ID_LENGTHS_ACCEPTED)
def test_event_id_of_1_to_255_characters_is_accepted(length: int) -> None:
    assert accepted(change(event_id="e" * length)).event_id == "e" * length


@pytest.mark.parametrize("length", ex.EVENT_ID_LENGTHS_REFUSED)
def test_event_id_outside_1_to_255_characters_is_refused(length: int) -> None:
    assert refused(change(event_id="e" * length)) == "event_id: must be 1 to 255 characters"


@pytest.mark.parametrize("value", ex.EVENT_ID_NOT_STRING, ids=repr)
def test_event_id_must_be_a_string(value: Any) -> None:
    assert refused(change(event_id=value)) == "event_id: must be a string"


def test_event_id_is_kept_exactly_not_trimmed() -> None:
    assert accepted(change(event_id=ex.EVENT_ID_WITH_SPACES)).event_id == " e-1 "


# --- occurred_at ----------------------------------------------------------------------------


def test_occurred_at_defaults_to_when_the_service_received_it() -> None:
    assert accepted(change()).occurred_at == NOW


@pytest.mark.parametrize(
    ("raw", "instant"),
    ex.OCCURRED_AT_INSTANTS,
)
def test_occurred_at_with_an_offset_is_read_as_an_instant(raw: str, instant: datetime) -> None:
    result = accepted(change(occurred_at=raw))
    assert result.occurred_at == instant
    assert result.occurred_at.utcoffset() is not None


@pytest.mark.parametrize("raw", ex.OCCURRED_AT_NOT_DATE_TIME_WITH_OFFSET)
def test_occurred_at_without_an_offset_or_not_a_date_time_is_refused(raw: str) -> None:
    reason = refused(change(occurred_at=raw))
    assert reason == "occurred_at: must be an ISO 8601 date-time with a UTC offset (Z or +03:00)"


@pytest.mark.parametrize("offset", ex.OCCURRED_AT_SECONDS_IN_OFFSET)
def test_occurred_at_with_seconds_in_its_offset_is_refused(offset: str) -> None:
    # ISO 8601 offsets are hours and minutes; Python reads more, PostgreSQL would fail the message
    reason = refused(change(occurred_at=f"2026-11-28T10:00:00{offset}"))
    assert reason == "occurred_at: must be an ISO 8601 date-time with a UTC offset (Z or +03:00)"


def test_occurred_at_must_be_a_string() -> None:
    assert refused(change(occurred_at=ex.OCCURRED_AT_NOT_STRING)) == "occurred_at: must be a string"


def test_occurred_at_up_to_five_minutes_ahead_is_accepted() -> None:
    ahead = ex.OCCURRED_AT_FIVE_MINUTES_AHEAD
    assert accepted(change(occurred_at=ahead.isoformat())).occurred_at == ahead


def test_occurred_at_more_than_five_minutes_ahead_is_refused() -> None:
    ahead = ex.OCCURRED_AT_TOO_FAR_AHEAD
    reason = refused(change(occurred_at=ahead.isoformat()))
    assert reason == "occurred_at: must not be more than 5 minutes ahead of the service's clock"


def test_occurred_at_before_year_one_in_utc_is_refused_not_crashing_the_store() -> None:
    # "0001-01-01T00:00:00+01:00" is an instant of year 0 in UTC, which no datetime can hold
    reason = refused(change(occurred_at=ex.OCCURRED_AT_BEFORE_YEAR_ONE))
    assert reason.startswith("occurred_at: ")


# --- the object as a whole ------------------------------------------------------------------


def test_unknown_field_is_refused_naming_it() -> None:
    assert refused(ex.UNKNOWN_FIELD) == "colour: is not a known field"


def test_unknown_field_with_a_nul_in_its_name_gives_a_printable_reason() -> None:
    reason = refused(ex.UNKNOWN_FIELD_WITH_NUL)
    assert "\x00" not in reason
    assert reason.endswith(": is not a known field")
    assert "bad" in reason


@pytest.mark.parametrize("raw", ex.NOT_AN_OBJECT, ids=repr)
def test_a_change_that_is_not_an_object_is_refused(raw: Any) -> None:
    assert refused(raw) == "change: must be an object"


def test_every_broken_rule_of_a_change_is_named() -> None:
    reason = refused(ex.SEVERAL_BROKEN_RULES)
    assert reason.split("; ") == [
        "campaign_id: must be ≥ 1",
        "sku: must be a string",
        "extra: is not a known field",
    ]


def test_cross_field_problems_are_all_named() -> None:
    reason = refused(ex.SEVERAL_CROSS_FIELD_PROBLEMS)
    assert "sku: must not be empty or only whitespace" in reason
    assert "delta/count: exactly one of delta and count is required" in reason
    assert "occurred_at: must be an ISO 8601 date-time" in reason


# --- messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("changes", ex.CHANGES_NOT_A_LIST, ids=repr)
def test_changes_that_are_not_a_list_make_the_message_unreadable(changes: Any) -> None:
    with pytest.raises(UnreadableMessage, match=r"^changes: must be a list of change objects$"):
        parse_message((), {"changes": changes}, NOW)


def test_an_empty_changes_list_makes_the_message_unreadable() -> None:
    with pytest.raises(UnreadableMessage, match=r"^changes: must hold 1 to 10,000 changes, got 0$"):
        parse_message((), {"changes": []}, NOW)


def test_10001_changes_make_the_message_unreadable() -> None:
    with pytest.raises(UnreadableMessage, match=r"changes: must hold 1 to 10,000 .* got 10,001$"):
        parse_message((), {"changes": [change()] * 10_001}, NOW)


def test_10000_changes_are_read() -> None:
    assert len(parse_message((), {"changes": [change()] * 10_000}, NOW).accepted) == 10_000


def test_unknown_keyword_arguments_make_the_message_unreadable() -> None:
    with pytest.raises(UnreadableMessage, match=r"^arguments: unknown keyword arguments \['x'\]$"):
        parse_message((), {"changes": [change()], "x": 1}, NOW)


def test_a_message_without_changes_is_unreadable() -> None:
    with pytest.raises(UnreadableMessage, match=r"^changes: is required$"):
        parse_message((), {}, NOW)


def test_positional_and_keyword_arguments_together_are_unreadable() -> None:
    with pytest.raises(UnreadableMessage, match=r"^arguments: "):
        parse_message(([change()],), {"changes": [change()]}, NOW)
    with pytest.raises(UnreadableMessage, match=r"^arguments: "):
        read_changes(([change()], [change()]), {})


def test_a_single_positional_list_is_read_as_the_changes() -> None:
    assert len(parse_message(([change(), change()],), {}, NOW).accepted) == 2


def test_mixed_valid_and_invalid_changes_keep_the_valid_ones_in_place() -> None:
    # Given a message whose second and fourth changes break rules
    raws: list[Any] = ex.MIXED_CHANGES
    # When it is parsed
    parsed = parse_message((), {"changes": raws}, NOW)
    # Then the valid ones are kept with their positions, the others with raw content and reason
    assert [(i, c.sku) for i, c in parsed.accepted] == [(0, "A"), (2, "C"), (4, "D")]
    assert [(r.index, r.raw) for r in parsed.rejected] == [(1, raws[1]), (3, raws[3])]
    assert parsed.rejected[0].reason.startswith("delta: must be an integer")
    assert parsed.rejected[1].reason == "change: must be an object"
