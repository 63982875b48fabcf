"""Validation of `stocks.submit` messages: each change is accepted or rejected, naming the rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from domain.market_rules import (
    COUNT_MAX,
    DELTA_MAX_ABS,
    SKU_MAX_LENGTH,
    normalize_sku,
    sku_is_valid,
)

CHANGES_PER_MESSAGE_MAX = 10_000
EVENT_ID_MAX_LENGTH = 255
FUTURE_TOLERANCE = timedelta(minutes=5)
# PostgreSQL stores ids as bigint: a larger campaign id must be refused, not fail the message.
CAMPAIGN_ID_MAX = 2**63 - 1

_NOT_INTEGER = "must be an integer (booleans, floats and numeric strings are not integers)"
_NOT_TEXT = "must be valid Unicode text (no lone surrogates)"


class _ChangeModel(BaseModel):
    """The wire shape of one change; the type rules only. Cross-field rules are checked after."""

    model_config = ConfigDict(extra="forbid", strict=True)

    campaign_id: StrictInt = Field(ge=1, le=CAMPAIGN_ID_MAX)
    sku: StrictStr
    delta: StrictInt | None = Field(default=None, ge=-DELTA_MAX_ABS, le=DELTA_MAX_ABS)
    count: StrictInt | None = Field(default=None, ge=0, le=COUNT_MAX)
    event_id: StrictStr | None = Field(default=None, min_length=1, max_length=EVENT_ID_MAX_LENGTH)
    occurred_at: StrictStr | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """A valid change, normalized: the SKU trimmed, `occurred_at` an aware datetime."""

    campaign_id: int
    sku: str
    delta: int | None
    count: int | None
    event_id: str | None
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Rejection:
    """A change that broke a rule: its position in the message, raw content and the reason."""

    index: int
    raw: Any
    reason: str


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """A readable message: its valid changes (with their positions) and its rejections."""

    accepted: list[tuple[int, Change]]
    rejected: list[Rejection]


class UnreadableMessage(ValueError):
    """The message as a whole cannot be read (wrong arguments, not a list, too many changes)."""


_FIELD_RULES: dict[tuple[str, str], str] = {
    ("campaign_id", "greater_than_equal"): "must be ≥ 1",
    ("campaign_id", "less_than_equal"): f"must be at most {CAMPAIGN_ID_MAX:,} (a 64-bit integer)",
    ("delta", "greater_than_equal"): f"|delta| must be ≤ {DELTA_MAX_ABS:,}",
    ("delta", "less_than_equal"): f"|delta| must be ≤ {DELTA_MAX_ABS:,}",
    ("count", "greater_than_equal"): f"must be between 0 and {COUNT_MAX:,}",
    ("count", "less_than_equal"): f"must be between 0 and {COUNT_MAX:,}",
    ("event_id", "string_too_short"): f"must be 1 to {EVENT_ID_MAX_LENGTH} characters",
    ("event_id", "string_too_long"): f"must be 1 to {EVENT_ID_MAX_LENGTH} characters",
}

_TYPE_RULES: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "int_type": _NOT_INTEGER,
    "string_type": "must be a string",
    "string_unicode": _NOT_TEXT,
    "model_type": "must be an object",
}


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "change"
    if not field.isprintable():  # an unknown field's name is the sender's: NUL cannot be stored
        field = ascii(field)
    rule = _FIELD_RULES.get((field, error["type"])) or _TYPE_RULES.get(error["type"], error["msg"])
    return f"{field}: {rule}"


def _is_text(value: str) -> bool:
    """False for a string with lone surrogates (JSON may carry "\\ud800"): not UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _parse_occurred_at(raw: str, now: datetime) -> tuple[datetime | None, str | None]:
    rule = "must be an ISO 8601 date-time with a UTC offset (Z or +03:00)"
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None, f"occurred_at: {rule}"
    offset = parsed.utcoffset()
    # ISO 8601 offsets are hours and minutes; Python also reads "+03:00:30.5", PostgreSQL does not.
    if offset is None or offset % timedelta(minutes=1):
        return None, f"occurred_at: {rule}"
    try:
        parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is in year 0 in UTC
        return None, "occurred_at: must be within the years 1 to 9999 in UTC"
    if parsed > now + FUTURE_TOLERANCE:
        return None, "occurred_at: must not be more than 5 minutes ahead of the service's clock"
    return parsed, None


def validate_change(raw: Any, now: datetime) -> Change | str:
    """One change object: a `Change`, or why it was rejected (fields and rules, `; `-joined)."""
    try:
        model = _ChangeModel.model_validate(raw)
    except ValidationError as exc:
        return "; ".join(dict.fromkeys(_describe(e) for e in exc.errors()))
    reasons: list[str] = []
    sku = normalize_sku(model.sku)
    if not sku:
        reasons.append("sku: must not be empty or only whitespace")
    elif not _is_text(sku):
        reasons.append(f"sku: {_NOT_TEXT}")
    elif len(sku) > SKU_MAX_LENGTH:
        reasons.append(f"sku: must be at most {SKU_MAX_LENGTH} characters after trimming")
    elif not sku_is_valid(sku):
        reasons.append(
            "sku: must match the Market pattern ^(?=.*\\S.*)[^\\x00-\\x08\\x0A-\\x1f\\x7f]{1,255}$ "
            "(no control characters)"
        )
    if (model.delta is None) == (model.count is None):
        reasons.append("delta/count: exactly one of delta and count is required")
    occurred_at = now
    if model.occurred_at is not None:
        parsed, problem = _parse_occurred_at(model.occurred_at, now)
        if problem:
            reasons.append(problem)
        elif parsed is not None:
            occurred_at = parsed
    if reasons:
        return "; ".join(reasons)
    return Change(
        campaign_id=model.campaign_id,
        sku=sku,
        delta=model.delta,
        count=model.count,
        event_id=model.event_id,
        occurred_at=occurred_at,
    )


def read_changes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The `changes` list of a `stocks.submit` call, or `UnreadableMessage` saying why not."""
    if (args and kwargs) or len(args) > 1:
        raise UnreadableMessage("arguments: expected only the keyword argument 'changes'")
    if args:
        changes = args[0]
    else:
        unknown = sorted(set(kwargs) - {"changes"})
        if unknown:
            raise UnreadableMessage(f"arguments: unknown keyword arguments {unknown}")
        if "changes" not in kwargs:
            raise UnreadableMessage("changes: is required")
        changes = kwargs["changes"]
    if not isinstance(changes, list):
        raise UnreadableMessage("changes: must be a list of change objects")
    if not 1 <= len(changes) <= CHANGES_PER_MESSAGE_MAX:
        raise UnreadableMessage(
            f"changes: must hold 1 to {CHANGES_PER_MESSAGE_MAX:,} changes, got {len(changes):,}"
        )
    return changes


def parse_message(args: tuple[Any, ...], kwargs: dict[str, Any], now: datetime) -> ParsedMessage:
    """Splits a readable message into valid changes and rejections, or `UnreadableMessage`."""
    accepted: list[tuple[int, Change]] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(read_changes(args, kwargs)):
        result = validate_change(raw, now)
        if isinstance(result, Change):
            accepted.append((index, result))
        else:
            rejected.append(Rejection(index=index, raw=raw, reason=result))
    return ParsedMessage(accepted=accepted, rejected=rejected)


TASK_ID_MAX_LENGTH = 255


def task_id_problem(task_id: object) -> str | None:
    """Why a message's task id cannot key its changes (PostgreSQL text, a btree entry), or None."""
    if not isinstance(task_id, str) or not task_id:
        return "message: the task id must be a non-empty string"
    if len(task_id) > TASK_ID_MAX_LENGTH or not task_id.isprintable():
        return f"message: the task id must be 1 to {TASK_ID_MAX_LENGTH} printable characters"
    return None
