"""The change objects and messages of `test_changes.py`, shared with `test_submit_schema.py`.

`test_changes.py` checks the service's reasons for each; `test_submit_schema.py` runs the same
examples through `producers/stocks-submit.schema.json`, so the schema and the service cannot drift.
An example added to a test of `test_changes.py` belongs here, in `VALID_CHANGES` or
`INVALID_CHANGES` (built at the end of this module).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def change(**fields: Any) -> dict[str, Any]:
    """A valid change object, with `fields` overriding or (as `None`-free) added."""
    base: dict[str, Any] = {"campaign_id": 1001, "sku": "A-100", "delta": -2}
    base.update(fields)
    return base


def without(name: str, **fields: Any) -> dict[str, Any]:
    raw = change(**fields)
    del raw[name]
    return raw


# --- the contract's own example -------------------------------------------------------------

CONTRACT_DELTA = {
    "campaign_id": 1001,
    "sku": "A-100",
    "delta": -2,
    "event_id": "order-77:line-1",
    "occurred_at": "2026-11-28T10:00:00+03:00",
}
CONTRACT_COUNT = {
    "campaign_id": 1001,
    "sku": "0557722",
    "count": 40,
    "event_id": "inventory:0557722",
}

# --- campaign_id ----------------------------------------------------------------------------

NO_CAMPAIGN_ID = without("campaign_id")
CAMPAIGN_ID_NOT_INTEGER: list[Any] = [True, False, 1001.0, "1001", None, [1001]]
CAMPAIGN_ID_BELOW_ONE = [0, -1, -1001]
CAMPAIGN_ID_SMALLEST = change(campaign_id=1)
CAMPAIGN_ID_LARGEST = change(campaign_id=2**63 - 1)
CAMPAIGN_ID_BEYOND_64_BITS = change(campaign_id=2**63)

# --- sku ------------------------------------------------------------------------------------

NO_SKU = without("sku")
SKU_NOT_STRING: list[Any] = [557722, 1.5, True, None, ["A"]]
SKU_TRIMMED = [(" SKU123 ", "SKU123"), ("\tA B\n", "A B"), ("0557722", "0557722"), ("abc", "abc")]
SKU_KEPT_EXACTLY = ["0557722", "557722", "Abc", "abc"]
SKU_EMPTY_OR_WHITESPACE = ["", " ", "   \t  ", "\n"]
SKU_CONTROL_CHARACTERS = ["A\x00B", "A\x01B", "A\nB", "A\x1bB", "A\x7fB"]
SKU_TAB_INSIDE = "A\tB"
SKU_255 = "x" * 255
SKU_255_PADDED = f"  {SKU_255}  "
SKU_256 = "y" * 256
SKU_255_CYRILLIC = "ё" * 255  # 510 bytes in UTF-8, 255 characters
SKU_LONE_SURROGATE = "A\ud800"

# --- delta and count ------------------------------------------------------------------------

DELTA_WITHIN = [2_000_000_000, -2_000_000_000, 0, 1, -1]
DELTA_BEYOND = [2_000_000_001, -2_000_000_001, 2**70]
DELTA_NOT_INTEGER: list[Any] = [True, -2.0, "-2", "1e3"]
COUNT_WITHIN = [0, 1, 2_000_000_000]
COUNT_OUTSIDE = [-1, 2_000_000_001]
COUNT_NOT_INTEGER: list[Any] = [False, 40.0, "40"]
DELTA_AND_COUNT = change(delta=1, count=5)
NEITHER_DELTA_NOR_COUNT = without("delta")
NULL_DELTA_WITH_COUNT = change(delta=None, count=3)

# --- event_id -------------------------------------------------------------------------------

EVENT_ID_LENGTHS_ACCEPTED = [1, 255]
EVENT_ID_LENGTHS_REFUSED = [0, 256]
EVENT_ID_NOT_STRING: list[Any] = [77, 7.5, True, ["x"]]
EVENT_ID_WITH_SPACES = " e-1 "

# --- occurred_at ----------------------------------------------------------------------------

OCCURRED_AT_INSTANTS = [
    ("2026-11-28T10:00:00Z", datetime(2026, 11, 28, 10, 0, tzinfo=UTC)),
    ("2026-11-28T10:00:00+03:00", datetime(2026, 11, 28, 7, 0, tzinfo=UTC)),
    ("2026-11-27T10:00:00.250-05:30", datetime(2026, 11, 27, 15, 30, 0, 250_000, tzinfo=UTC)),
    ("2020-01-01T00:00:00+00:00", datetime(2020, 1, 1, tzinfo=UTC)),
]
OCCURRED_AT_NOT_DATE_TIME_WITH_OFFSET = [
    "2026-11-28T10:00:00",
    "2026-11-28",
    "2026-11-28 10:00",
    "yesterday",
    "",
    "10:00Z",
]
OCCURRED_AT_SECONDS_IN_OFFSET = ["+03:00:30", "+03:00:30.500000", "-00:00:01"]
OCCURRED_AT_NOT_STRING = 1764320000
OCCURRED_AT_FIVE_MINUTES_AHEAD = NOW + timedelta(minutes=5)
OCCURRED_AT_TOO_FAR_AHEAD = (NOW + timedelta(minutes=5, seconds=1)).astimezone(
    timezone(timedelta(hours=3))
)
# An instant of year 0 in UTC, which no datetime can hold
OCCURRED_AT_BEFORE_YEAR_ONE = "0001-01-01T00:00:00+01:00"

# --- the object as a whole ------------------------------------------------------------------

UNKNOWN_FIELD = change(colour="red")
UNKNOWN_FIELD_WITH_NUL = change(**{"bad\x00name": 1})
NOT_AN_OBJECT: list[Any] = [None, 5, "A-100", ["A-100", 1]]
SEVERAL_BROKEN_RULES = {"campaign_id": 0, "sku": 5, "delta": 1, "extra": True}
SEVERAL_CROSS_FIELD_PROBLEMS = change(sku="  ", count=1, occurred_at="tomorrow")

# --- messages -------------------------------------------------------------------------------

CHANGES_NOT_A_LIST: list[Any] = [{"campaign_id": 1}, "[]", None, 5]
# A message whose second and fourth changes break rules
MIXED_CHANGES: list[Any] = [
    change(sku="A", delta=1),
    change(sku="B", delta=1.5),
    without("delta", sku=" C ", count=7),
    "not an object",
    change(sku="D", delta=-4, event_id="e-4"),
]
MIXED_REFUSED_POSITIONS = (1, 3)

# --- every change object above, by whether the service accepts it ---------------------------

VALID_CHANGES: list[tuple[str, Any]] = [
    ("contract delta", CONTRACT_DELTA),
    ("contract count", CONTRACT_COUNT),
    ("campaign_id 1", CAMPAIGN_ID_SMALLEST),
    ("campaign_id 2**63-1", CAMPAIGN_ID_LARGEST),
    *[(f"sku {raw!r}", change(sku=raw)) for raw, _ in SKU_TRIMMED],
    *[(f"sku kept {raw!r}", change(sku=raw)) for raw in SKU_KEPT_EXACTLY],
    ("sku with a tab", change(sku=SKU_TAB_INSIDE)),
    ("sku 255 padded", change(sku=SKU_255_PADDED)),
    ("sku 255 cyrillic", change(sku=SKU_255_CYRILLIC)),
    *[(f"delta {value}", change(delta=value)) for value in DELTA_WITHIN],
    *[(f"count {value}", without("delta", count=value)) for value in COUNT_WITHIN],
    ("null delta with count", NULL_DELTA_WITH_COUNT),
    ("plain change", change()),
    *[(f"event_id of {n}", change(event_id="e" * n)) for n in EVENT_ID_LENGTHS_ACCEPTED],
    ("event_id with spaces", change(event_id=EVENT_ID_WITH_SPACES)),
    *[(f"occurred_at {raw}", change(occurred_at=raw)) for raw, _ in OCCURRED_AT_INSTANTS],
    ("occurred_at 5 min ahead", change(occurred_at=OCCURRED_AT_FIVE_MINUTES_AHEAD.isoformat())),
    *[
        (f"mixed message #{i}", raw)
        for i, raw in enumerate(MIXED_CHANGES)
        if i not in MIXED_REFUSED_POSITIONS
    ],
]

INVALID_CHANGES: list[tuple[str, Any]] = [
    ("no campaign_id", NO_CAMPAIGN_ID),
    *[(f"campaign_id {v!r}", change(campaign_id=v)) for v in CAMPAIGN_ID_NOT_INTEGER],
    *[(f"campaign_id {v}", change(campaign_id=v)) for v in CAMPAIGN_ID_BELOW_ONE],
    ("campaign_id 2**63", CAMPAIGN_ID_BEYOND_64_BITS),
    ("no sku", NO_SKU),
    *[(f"sku {v!r}", change(sku=v)) for v in SKU_NOT_STRING],
    *[(f"sku {v!r}", change(sku=v)) for v in SKU_EMPTY_OR_WHITESPACE],
    *[(f"sku {v!r}", change(sku=v)) for v in SKU_CONTROL_CHARACTERS],
    ("sku 256", change(sku=SKU_256)),
    ("sku lone surrogate", change(sku=SKU_LONE_SURROGATE)),
    *[(f"delta {v}", change(delta=v)) for v in DELTA_BEYOND],
    *[(f"delta {v!r}", change(delta=v)) for v in DELTA_NOT_INTEGER],
    *[(f"count {v}", without("delta", count=v)) for v in COUNT_OUTSIDE],
    *[(f"count {v!r}", without("delta", count=v)) for v in COUNT_NOT_INTEGER],
    ("delta and count", DELTA_AND_COUNT),
    ("neither delta nor count", NEITHER_DELTA_NOR_COUNT),
    *[(f"event_id of {n}", change(event_id="e" * n)) for n in EVENT_ID_LENGTHS_REFUSED],
    *[(f"event_id {v!r}", change(event_id=v)) for v in EVENT_ID_NOT_STRING],
    *[(f"occurred_at {v!r}", change(occurred_at=v)) for v in OCCURRED_AT_NOT_DATE_TIME_WITH_OFFSET],
    *[
        (f"occurred_at offset {v}", change(occurred_at=f"2026-11-28T10:00:00{v}"))
        for v in OCCURRED_AT_SECONDS_IN_OFFSET
    ],
    ("occurred_at not a string", change(occurred_at=OCCURRED_AT_NOT_STRING)),
    ("occurred_at too far ahead", change(occurred_at=OCCURRED_AT_TOO_FAR_AHEAD.isoformat())),
    ("occurred_at before year 1", change(occurred_at=OCCURRED_AT_BEFORE_YEAR_ONE)),
    ("unknown field", UNKNOWN_FIELD),
    ("unknown field with NUL", UNKNOWN_FIELD_WITH_NUL),
    *[(f"not an object {v!r}", v) for v in NOT_AN_OBJECT],
    ("several broken rules", SEVERAL_BROKEN_RULES),
    ("several cross-field problems", SEVERAL_CROSS_FIELD_PROBLEMS),
    *[(f"mixed message #{i}", MIXED_CHANGES[i]) for i in MIXED_REFUSED_POSITIONS],
]
