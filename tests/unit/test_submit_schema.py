"""The producers' JSON Schema (`producers/stocks-submit.schema.json`) against the service's own
validation (`domain/changes.py`): every example of `test_changes.py` must get the same verdict,
and a refusal must name the same fields. Where a schema cannot say what the service does, the
difference is listed here and in `producers/README.md`, and tested to be exactly that."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, ValidationError

from domain.changes import Change, UnreadableMessage, read_changes, validate_change
from tests.unit import change_examples as ex
from tests.unit.change_examples import NOW, change

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "producers" / "stocks-submit.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

# Refused by the service, accepted by the schema: what JSON Schema cannot express
# (producers/README.md, "Where the schema and the service differ").
SCHEMA_LOOSER = {
    # JSON Schema's "integer" is any number with a zero fraction: 1001.0 is the integer 1001
    "campaign_id 1001.0",
    "delta -2.0",
    "count 40.0",
    # relative to the service's clock
    "occurred_at too far ahead",
    # the instant is in year 0 in UTC: a pattern cannot weigh the offset against the hour
    "occurred_at before year 1",
}


def schema_errors(kwargs: Any) -> list[ValidationError]:
    return list(VALIDATOR.iter_errors(kwargs))


def _printable(name: str) -> str:
    # The service quotes a field name it cannot print (an unknown field with NUL in its name).
    return name if name.isprintable() else ascii(name)


def change_error_fields(error: ValidationError) -> set[str]:
    """The fields of one change that a schema error names, as the service would name them.

    A type or range error lies at the field's path ($.changes[0].sku); "required",
    "additionalProperties" and "oneOf" lie at the change itself and name their fields.
    """
    path = list(error.absolute_path)
    assert path[:2] == ["changes", 0], f"not an error of the first change: {error}"
    if len(path) > 2:
        return {str(path[2])}
    if error.validator == "type":
        return {"change"}
    if error.validator == "required":
        return {str(name) for name in error.validator_value if name not in error.instance}
    if error.validator == "additionalProperties":
        known = set(error.schema["properties"])
        return {_printable(name) for name in error.instance if name not in known}
    if error.validator == "oneOf":
        return {"delta/count"}
    raise AssertionError(f"no field for schema error {error.validator}: {error.message}")


def service_fields(reason: str) -> set[str]:
    """The fields a service reason names: `field: rule; field: rule`."""
    return {part.split(": ", 1)[0] for part in reason.split("; ")}


def schema_fields(raw: Any) -> set[str]:
    fields: set[str] = set()
    for error in schema_errors({"changes": [raw]}):
        fields |= change_error_fields(error)
    return fields


def service_accepts(raw: Any, now: datetime = NOW) -> bool:
    return isinstance(validate_change(raw, now), Change)


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_example_is_listed_once() -> None:
    names = [name for name, _ in ex.VALID_CHANGES + ex.INVALID_CHANGES]
    assert len(names) == len(set(names))
    assert {name for name, _ in ex.INVALID_CHANGES} >= SCHEMA_LOOSER


@pytest.mark.parametrize(("name", "raw"), ex.VALID_CHANGES, ids=[n for n, _ in ex.VALID_CHANGES])
def test_the_schema_accepts_every_change_the_service_accepts(name: str, raw: Any) -> None:
    assert service_accepts(raw), f"{name} is no longer valid for the service: update the examples"
    assert schema_errors({"changes": [raw]}) == []


@pytest.mark.parametrize(
    ("name", "raw"), ex.INVALID_CHANGES, ids=[n for n, _ in ex.INVALID_CHANGES]
)
def test_the_schema_refuses_every_change_the_service_refuses_naming_the_same_fields(
    name: str, raw: Any
) -> None:
    reason = validate_change(raw, NOW)
    assert isinstance(reason, str), f"{name} is accepted by the service: update the examples"
    if name in SCHEMA_LOOSER:
        # A documented gap: if the schema learns to refuse it, move it out of SCHEMA_LOOSER
        assert schema_errors({"changes": [raw]}) == []
    else:
        assert schema_fields(raw) == service_fields(reason), reason


# --- beyond the examples: the two patterns against the service's code, property by property ----

# The properties are about verdicts, not speed: no per-example deadline on a loaded machine.
_NO_DEADLINE = settings(deadline=None)

_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_AWKWARD = _WHITESPACE + "\x00\x01\x08\x0e\x1b\x7f\ud800\udfff\ufeff\u200bAё😀\t "


def _sku_verdicts(sku: str) -> tuple[bool, bool]:
    raw = change(sku=sku)
    return service_accepts(raw), not schema_errors({"changes": [raw]})


def test_the_sku_pattern_trims_exactly_what_the_service_trims() -> None:
    # Python's str.strip() set, which the pattern spells out for regex engines whose \s differs
    assert all(_sku_verdicts(f"{space}A{space}") == (True, True) for space in _WHITESPACE)
    assert _sku_verdicts("\ufeffA") == (True, True)  # not whitespace for the service: kept


@_NO_DEADLINE
@given(
    st.text(
        alphabet=st.one_of(st.sampled_from(_AWKWARD), st.characters(codec=None)),
        max_size=12,
    )
)
def test_the_sku_pattern_agrees_with_the_service_on_any_short_text(sku: str) -> None:
    service, schema = _sku_verdicts(sku)
    assert service == schema, (sku, validate_change(change(sku=sku), NOW))


@_NO_DEADLINE
@given(
    st.text(alphabet=st.sampled_from(_AWKWARD), max_size=3),
    st.integers(min_value=250, max_value=260),
    st.text(alphabet=st.sampled_from(_AWKWARD), max_size=3),
    st.text(alphabet=st.sampled_from(_AWKWARD), max_size=3),
)
def test_the_sku_pattern_counts_255_characters_after_trimming_as_the_service_does(
    head: str, length: int, middle: str, tail: str
) -> None:
    core = "x" * (length // 2) + middle + "x" * (length - length // 2)
    sku = head + core + tail
    service, schema = _sku_verdicts(sku)
    assert service == schema, (repr(sku), len(sku.strip()))


# Only the "5 minutes ahead" rule needs the service's clock: keep it out of the way.
_FAR_FUTURE = datetime(9999, 12, 31, 23, 54, 59, tzinfo=UTC)


@_NO_DEADLINE
@given(
    st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
    st.sampled_from(["auto", "seconds", "minutes", "milliseconds", "microseconds"]),
    st.sampled_from(["T", "t", " "]),
    st.booleans(),
)
def test_the_schema_accepts_every_rfc_3339_date_time_the_service_reads(
    moment: datetime, offset_minutes: int, timespec: str, separator: str, zulu: bool
) -> None:
    text = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat(
        sep=separator, timespec=timespec
    )
    if zulu and offset_minutes == 0:
        text = text.replace("+00:00", "Z")
    raw = change(occurred_at=text)
    assert service_accepts(raw, _FAR_FUTURE), text
    assert schema_errors({"changes": [raw]}) == [], text


OCCURRED_AT_PATTERN = SCHEMA["$defs"]["change"]["properties"]["occurred_at"]["pattern"]


@_NO_DEADLINE
@given(st.from_regex(OCCURRED_AT_PATTERN, fullmatch=True))
def test_a_date_time_the_schema_accepts_is_read_by_the_service_unless_no_such_day(
    text: str,
) -> None:
    reason = validate_change(change(occurred_at=text), _FAR_FUTURE)
    if isinstance(reason, Change):
        return
    # The pattern knows months of 31 days; the calendar and the years 1 to 9999 in UTC (which
    # depend on the offset) are the service's.
    year, month, day = (int(part) for part in text[:10].split("-"))
    try:
        datetime(year, month, day)
    except ValueError:
        return
    assert year in (1, 9999), (text, reason)
    assert "years 1 to 9999" in reason or "ahead" in reason, (text, reason)


# Read by the service (Python's datetime.fromisoformat), refused by the schema: ISO 8601 forms
# beyond RFC 3339 that no producer's date formatter writes (producers/README.md).
SCHEMA_STRICTER_OCCURRED_AT = [
    "2026-11-28T10:00:00,5Z",
    "2026-11-28T10:00:00+0300",
    "2026-11-28T10+03:00",
    "20261128T100000Z",
    "2026-W48-6T10:00Z",
    "2026-11-28X10:00:00Z",
    "2026-11-28T10:00:00.Z",
]
# Refused by the service, accepted by the schema (producers/README.md).
SCHEMA_LOOSER_OCCURRED_AT = [
    "2026-02-30T10:00:00Z",  # a day past the end of its month
    "2026-11-28T10:00:00Z\n",  # Python's re: "$" also matches before a final newline
]


@pytest.mark.parametrize("text", SCHEMA_STRICTER_OCCURRED_AT)
def test_the_schema_is_stricter_only_where_documented(text: str) -> None:
    raw = change(occurred_at=text)
    assert service_accepts(raw)
    assert schema_fields(raw) == {"occurred_at"}


@pytest.mark.parametrize("text", SCHEMA_LOOSER_OCCURRED_AT, ids=repr)
def test_the_schema_is_looser_only_where_documented(text: str) -> None:
    raw = change(occurred_at=text)
    assert not service_accepts(raw)
    assert schema_errors({"changes": [raw]}) == []


def test_lowercase_z_is_refused_by_both_though_rfc_3339_allows_it() -> None:
    raw = change(occurred_at="2026-11-28T10:00:00z")
    assert not service_accepts(raw)
    assert schema_fields(raw) == {"occurred_at"}


# --- whole messages -------------------------------------------------------------------------

MESSAGES: list[tuple[str, Any]] = [
    *[(f"changes {v!r}", {"changes": v}) for v in ex.CHANGES_NOT_A_LIST],
    ("no change", {"changes": []}),
    ("10001 changes", {"changes": [change()] * 10_001}),
    ("unknown keyword", {"changes": [change()], "x": 1}),
    ("no changes", {}),
]


def message_error_fields(kwargs: Any) -> set[str]:
    fields: set[str] = set()
    for error in schema_errors(kwargs):
        path = list(error.absolute_path)
        if path:
            fields.add(str(path[0]))
        elif error.validator == "required":
            fields.add("changes")
        elif error.validator == "additionalProperties":
            fields.add("arguments")  # the service's name for unknown keyword arguments
        else:
            raise AssertionError(error.message)
    return fields


@pytest.mark.parametrize(("name", "kwargs"), MESSAGES, ids=[n for n, _ in MESSAGES])
def test_the_schema_refuses_every_message_the_service_cannot_read(name: str, kwargs: Any) -> None:
    with pytest.raises(UnreadableMessage) as refused:
        read_changes((), kwargs)
    assert message_error_fields(kwargs) == service_fields(str(refused.value))


def test_the_schema_accepts_a_message_of_10000_changes_with_mixed_ones_refused_inside() -> None:
    assert schema_errors({"changes": [change()] * 10_000}) == []
    assert len(read_changes((), {"changes": [change()] * 10_000})) == 10_000
    errors = schema_errors({"changes": ex.MIXED_CHANGES})
    assert {tuple(e.absolute_path)[:2] for e in errors} == {("changes", 1), ("changes", 3)}


def test_the_schema_states_the_contract_limits() -> None:
    change_schema = SCHEMA["$defs"]["change"]
    fields = change_schema["properties"]
    assert change_schema["additionalProperties"] is False
    assert fields["delta"]["minimum"] == -2_000_000_000
    assert fields["count"]["maximum"] == 2_000_000_000
    assert fields["event_id"]["maxLength"] == 255
    assert re.search(fields["sku"]["pattern"], "A-100")
