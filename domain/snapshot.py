"""Inventory snapshots for `stocksync import`: files of absolute counts, read line by line.

A snapshot is a CSV file with the header `sku,count` or a JSON Lines file of `{"sku", "count"}`
objects. Each data line becomes a producer's change object (`count`, i.e. an absolute level)
and is validated by `domain.changes.validate_change` like any other change.

Identity (what makes a re-run a no-op): the import id is
`import:<first 16 hex of the file's SHA-256>:<campaign>[:<--at, UTC>]` and every line's event id
is `<import id>:<line number>`. The time a run starts is not part of it: a second run of the same
file into the same campaign produces the same event ids, so every line is a duplicate whatever
its `occurred_at` would have been. An explicit `--at` is part of the identity: the same content
counted at another time (an identical recount) is a new snapshot and applies again.

Line numbers are physical lines of the file, from 1 (the CSV header is line 1); blank lines are
skipped. Reading never holds more than one line (at most `MAX_LINE_BYTES`) in memory.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any

from domain.changes import Change, Rejection, validate_change
from domain.market_rules import COUNT_MAX

MAX_LINE_BYTES = 64 * 1024
PREVIEW_CHARS = 2_000
DIGEST_CHARS = 16
FIELDS = ("sku", "count")

_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
# More digits than this cannot be a valid count; also keeps int() far from its digit limit.
_COUNT_DIGITS_MAX = 19


class SnapshotFormat(StrEnum):
    """The two file formats a snapshot may have."""

    CSV = "csv"
    JSONL = "jsonl"


class SnapshotError(ValueError):
    """The file as a whole is not a snapshot (no or wrong CSV header, unknown format)."""


@dataclass(frozen=True, slots=True)
class SnapshotLine:
    """One non-blank data line: exactly one of its fields (as read) and why it is unreadable."""

    # `fields` holds only `sku` and/or `count`; `text` is the line (shortened to PREVIEW_CHARS),
    # the raw content kept for an unreadable line; `offset` counts the file's bytes consumed
    # through this line (for progress).

    number: int
    text: str
    fields: dict[str, Any] | None
    problem: str | None
    offset: int


def format_for(file_name: str, explicit: str | None) -> SnapshotFormat:
    """The format given, else the one the file's extension names, else `SnapshotError`."""
    if explicit is not None:
        return SnapshotFormat(explicit)
    lowered = file_name.lower()
    if lowered.endswith(".csv"):
        return SnapshotFormat.CSV
    if lowered.endswith((".jsonl", ".ndjson")):
        return SnapshotFormat.JSONL
    raise SnapshotError(
        f"cannot tell the format of {file_name!r} from its extension: pass --format csv or jsonl"
    )


def import_id(digest_hex: str, campaign_id: int, at: datetime | None) -> str:
    """The import's identity: file content (SHA-256 prefix), campaign, and `--at` when given."""
    base = f"import:{digest_hex[:DIGEST_CHARS]}:{campaign_id}"
    if at is None:
        return base
    utc = at.astimezone(UTC)
    stamp = utc.strftime("%Y%m%dT%H%M%S") + (f".{utc.microsecond:06d}" if utc.microsecond else "")
    return f"{base}:{stamp}Z"


def event_id(import_identity: str, line_number: int) -> str:
    """A line's event id: unique per import identity and line, the same on every re-run."""
    return f"{import_identity}:{line_number}"


def physical_lines(
    stream: IO[bytes], max_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None, int]]:
    """(number, bytes without the line end or None when longer than `max_bytes`, offset after)."""
    number = 0
    offset = 0
    while True:
        chunk = stream.readline(max_bytes + 1)
        if not chunk:
            return
        number += 1
        offset += len(chunk)
        if len(chunk) > max_bytes and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the overlong line
                chunk = stream.readline(max_bytes)
                offset += len(chunk)
            yield number, None, offset
            continue
        yield number, chunk.rstrip(b"\n").removesuffix(b"\r"), offset


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def _csv_cells(text: str) -> list[str] | None:
    try:
        return next(csv.reader([text], strict=True), [])
    except csv.Error:
        return None


def _csv_count(cell: str) -> tuple[int | str, str | None]:
    value = cell.strip()
    if not value:
        return cell, "count: is required"
    if not _INTEGER.fullmatch(value):
        return cell, "count: must be a whole number written in digits (e.g. 12)"
    if len(value.lstrip("+-")) > _COUNT_DIGITS_MAX:
        return cell, f"count: must be between 0 and {COUNT_MAX:,}"
    return int(value), None


def _read_csv_header(text: str) -> list[str]:
    cells = _csv_cells(text)
    names = [c.strip().lower() for c in cells] if cells is not None else []
    if sorted(names) != sorted(FIELDS):
        raise SnapshotError(
            f"line 1: the CSV header must be sku,count (comma-separated), got {_preview(text)!r}"
        )
    return names


def _read_csv_line(text: str, header: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    cells = _csv_cells(text)
    if cells is None:
        return None, "line: not valid CSV (an unbalanced quote?)"
    if len(cells) != len(header):
        return None, f"line: expected 2 fields (sku,count), got {len(cells)}"
    fields: dict[str, Any] = dict(zip(header, cells, strict=True))
    count, problem = _csv_count(fields["count"])
    if problem:
        return None, problem
    return {"sku": fields["sku"], "count": count}, None


def _read_json_line(text: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None, "line: not valid JSON"
    if not isinstance(value, dict):
        return None, 'line: must be a JSON object like {"sku": "A-1", "count": 12}'
    unknown = [name for name in value if name not in FIELDS]
    if unknown:
        return None, "; ".join(
            f"{ascii(name) if not name.isprintable() else name}: is not a known field "
            "(a snapshot line has sku and count)"
            for name in unknown
        )
    return value, None


def read_snapshot(stream: IO[bytes], fmt: SnapshotFormat) -> Iterator[SnapshotLine]:
    """The file's data lines, one at a time; `SnapshotError` when a CSV header is wrong."""
    header: list[str] | None = None
    for number, raw, offset in physical_lines(stream):
        if raw is None:
            yield SnapshotLine(
                number, "", None, f"line: longer than {MAX_LINE_BYTES:,} bytes", offset
            )
            continue
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "replace")
            if fmt is SnapshotFormat.CSV and header is None:
                raise SnapshotError("line 1: the CSV header is not valid UTF-8 text") from None
            yield SnapshotLine(number, _preview(text), None, "line: not valid UTF-8 text", offset)
            continue
        if not text.strip():
            continue
        if fmt is SnapshotFormat.CSV and header is None:
            header = _read_csv_header(text)
            continue
        if fmt is SnapshotFormat.CSV:
            assert header is not None
            fields, problem = _read_csv_line(text, header)
        else:
            fields, problem = _read_json_line(text)
        yield SnapshotLine(number, _preview(text), fields, problem, offset)
    if fmt is SnapshotFormat.CSV and header is None:
        raise SnapshotError("the file is empty: a CSV snapshot starts with the header sku,count")


def change_object(
    line: SnapshotLine, campaign_id: int, import_identity: str, occurred_at: str
) -> dict[str, Any]:
    """The change object a line stands for; for an unreadable line, its text instead of fields."""
    if line.fields is None:
        return {
            "campaign_id": campaign_id,
            "line": line.text,
            "event_id": event_id(import_identity, line.number),
        }
    return {
        "campaign_id": campaign_id,
        **line.fields,
        "event_id": event_id(import_identity, line.number),
        "occurred_at": occurred_at,
    }


def split_lines(
    lines: Iterable[SnapshotLine],
    campaign_id: int,
    import_identity: str,
    occurred_at: str,
    now: datetime,
) -> tuple[list[tuple[int, Change]], list[Rejection]]:
    """Valid changes and rejected changes of some lines, each keyed by its line number."""
    accepted: list[tuple[int, Change]] = []
    rejected: list[Rejection] = []
    for line in lines:
        raw = change_object(line, campaign_id, import_identity, occurred_at)
        result = line.problem or validate_change(raw, now)
        if isinstance(result, Change):
            accepted.append((line.number, result))
        else:
            rejected.append(Rejection(index=line.number, raw=raw, reason=result))
    return accepted, rejected
