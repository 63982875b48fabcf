"""Snapshot files for `stocksync import`: lines, formats, identities and the change each line is."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain.changes import Change
from domain.snapshot import (
    MAX_LINE_BYTES,
    SnapshotError,
    SnapshotFormat,
    SnapshotLine,
    change_object,
    event_id,
    format_for,
    import_id,
    physical_lines,
    read_snapshot,
    split_lines,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
DIGEST = "0123456789abcdef" + "f" * 48
IMPORT = "import:0123456789abcdef:1001"
AT = "2026-11-28T11:00:00+00:00"


def csv_lines(content: bytes) -> list[SnapshotLine]:
    return list(read_snapshot(io.BytesIO(content), SnapshotFormat.CSV))


def jsonl_lines(content: bytes) -> list[SnapshotLine]:
    return list(read_snapshot(io.BytesIO(content), SnapshotFormat.JSONL))


# --- format and identity -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("stock.csv", SnapshotFormat.CSV),
        ("STOCK.CSV", SnapshotFormat.CSV),
        ("stock.jsonl", SnapshotFormat.JSONL),
        ("stock.ndjson", SnapshotFormat.JSONL),
    ],
)
def test_format_comes_from_the_extension(name: str, expected: SnapshotFormat) -> None:
    assert format_for(name, None) is expected


def test_an_explicit_format_wins_over_the_extension() -> None:
    assert format_for("stock.csv", "jsonl") is SnapshotFormat.JSONL
    assert format_for("export.txt", "csv") is SnapshotFormat.CSV


def test_an_unknown_extension_without_format_is_an_error_naming_the_option() -> None:
    with pytest.raises(SnapshotError, match="--format"):
        format_for("export.txt", None)


def test_import_id_is_the_digest_prefix_and_the_campaign() -> None:
    assert import_id(DIGEST, 1001, None) == "import:0123456789abcdef:1001"
    assert import_id(DIGEST, 2001, None) != import_id(DIGEST, 1001, None)


def test_import_id_with_at_names_the_instant_in_utc_whatever_its_offset() -> None:
    moscow = datetime(2026, 11, 28, 13, 0, tzinfo=timezone(timedelta(hours=3)))
    utc = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

    assert import_id(DIGEST, 1001, moscow) == "import:0123456789abcdef:1001:20261128T100000Z"
    assert import_id(DIGEST, 1001, moscow) == import_id(DIGEST, 1001, utc)
    assert import_id(DIGEST, 1001, utc + timedelta(microseconds=5)).endswith(".000005Z")


def test_event_ids_differ_per_line_and_fit_the_contract() -> None:
    assert event_id(IMPORT, 2) == f"{IMPORT}:2"
    assert event_id(IMPORT, 2) != event_id(IMPORT, 3)
    longest = event_id(import_id(DIGEST, 2**63 - 1, NOW), 10**12)
    assert len(longest) <= 255


# --- physical lines -------------------------------------------------------------------------


def test_physical_lines_strip_line_ends_and_count_bytes() -> None:
    data = b"a,1\r\nb,2\nc,3"

    assert list(physical_lines(io.BytesIO(data))) == [
        (1, b"a,1", 5),
        (2, b"b,2", 9),
        (3, b"c,3", 12),
    ]


def test_an_overlong_line_is_reported_and_skipped_without_shifting_the_next_numbers() -> None:
    data = b"a,1\n" + b"x" * 50 + b"\nb,2\n"

    lines = list(physical_lines(io.BytesIO(data), max_bytes=16))

    assert lines == [(1, b"a,1", 4), (2, None, 55), (3, b"b,2", 59)]


def test_an_overlong_last_line_without_newline_is_reported() -> None:
    lines = list(physical_lines(io.BytesIO(b"y" * 40), max_bytes=16))

    assert lines == [(1, None, 40)]


def test_a_line_of_exactly_the_limit_is_read() -> None:
    assert list(physical_lines(io.BytesIO(b"z" * 16), max_bytes=16)) == [(1, b"z" * 16, 16)]


def test_reading_is_lazy_one_line_at_a_time() -> None:
    stream = io.BytesIO(b"sku,count\n" + b"A-1,1\n" * 10_000)

    first = next(read_snapshot(stream, SnapshotFormat.CSV))

    assert first.number == 2
    assert stream.tell() == len(b"sku,count\nA-1,1\n")


# --- CSV -----------------------------------------------------------------------------------


def test_csv_lines_become_sku_and_integer_count_with_file_line_numbers() -> None:
    lines = csv_lines(b"sku,count\nA-1,10\n\n  \nB-2, 0 \n")

    assert [(x.number, x.fields, x.problem) for x in lines] == [
        (2, {"sku": "A-1", "count": 10}, None),
        (5, {"sku": "B-2", "count": 0}, None),
    ]


def test_csv_header_may_swap_the_columns_and_carry_a_bom_and_spaces() -> None:
    lines = csv_lines(b"\xef\xbb\xbf Count , SKU\r\n7,A-1\r\n")

    assert lines[0].fields == {"sku": "A-1", "count": 7}


def test_a_quoted_csv_sku_may_hold_a_comma_and_keeps_its_spaces() -> None:
    lines = csv_lines(b'sku,count\n" A,1 ",3\n')

    assert lines[0].fields == {"sku": " A,1 ", "count": 3}


@pytest.mark.parametrize(
    "header", [b"sku;count", b"sku", b"sku,count,price", b"article,count", b"A-1,10"]
)
def test_a_wrong_csv_header_is_an_error_of_the_whole_file(header: bytes) -> None:
    with pytest.raises(SnapshotError, match="header must be sku,count"):
        csv_lines(header + b"\nA-1,10\n")


def test_an_empty_csv_file_is_an_error_and_a_header_alone_is_no_lines() -> None:
    with pytest.raises(SnapshotError, match="empty"):
        csv_lines(b"\n\n")
    assert csv_lines(b"sku,count\n") == []


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("abc", "count: must be a whole number written in digits (e.g. 12)"),
        ("1.5", "count: must be a whole number written in digits (e.g. 12)"),
        ("1_000", "count: must be a whole number written in digits (e.g. 12)"),
        ("١٢", "count: must be a whole number written in digits (e.g. 12)"),
        ("", "count: is required"),
        ("9" * 20, "count: must be between 0 and 2,000,000,000"),
        ("9" * 5000, "count: must be between 0 and 2,000,000,000"),
    ],
)
def test_a_csv_count_that_is_not_a_whole_number_is_a_line_problem(cell: str, problem: str) -> None:
    lines = csv_lines(f"sku,count\nA-1,{cell}\n".encode())

    assert lines[0].fields is None
    assert lines[0].problem == problem


def test_a_signed_csv_count_is_read_as_an_integer_for_validation_to_judge() -> None:
    assert [x.fields for x in csv_lines(b"sku,count\nA,-4\nB,+5\n")] == [
        {"sku": "A", "count": -4},
        {"sku": "B", "count": 5},
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"A-1", "line: expected 2 fields (sku,count), got 1"),
        (b"A,1,2", "line: expected 2 fields (sku,count), got 3"),
        (b'"A-1,10', "line: not valid CSV (an unbalanced quote?)"),
        (b"A-\xff,10", "line: not valid UTF-8 text"),
    ],
)
def test_an_unreadable_csv_line_is_a_problem_and_the_next_lines_still_count(
    line: bytes, problem: str
) -> None:
    lines = csv_lines(b"sku,count\n" + line + b"\nB-2,3\n")

    assert (lines[0].number, lines[0].fields, lines[0].problem) == (2, None, problem)
    assert (lines[1].number, lines[1].fields) == (3, {"sku": "B-2", "count": 3})


def test_an_overlong_line_is_a_problem_of_that_line_only() -> None:
    content = b"sku,count\nA," + b"1" * (MAX_LINE_BYTES + 10) + b"\nB,2\n"

    lines = csv_lines(content)

    assert lines[0].problem == f"line: longer than {MAX_LINE_BYTES:,} bytes"
    assert (lines[1].number, lines[1].fields) == (3, {"sku": "B", "count": 2})


def test_offsets_reach_the_file_size() -> None:
    content = b"sku,count\nA,1\nB,2\n"

    assert csv_lines(content)[-1].offset == len(content)


# --- JSON Lines -----------------------------------------------------------------------------


def test_jsonl_lines_keep_their_values_as_json_typed_them() -> None:
    lines = jsonl_lines(b'{"sku": "A-1", "count": 12}\n\n{"count": 1.5, "sku": "B"}\n')

    assert [(x.number, x.fields) for x in lines] == [
        (1, {"sku": "A-1", "count": 12}),
        (3, {"count": 1.5, "sku": "B"}),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json", "line: not valid JSON"),
        (b'{"sku": "A"', "line: not valid JSON"),
        (b"[1, 2]", 'line: must be a JSON object like {"sku": "A-1", "count": 12}'),
        (b"12", 'line: must be a JSON object like {"sku": "A-1", "count": 12}'),
        (
            b'{"sku": "A", "count": 1, "campaign_id": 7}',
            "campaign_id: is not a known field (a snapshot line has sku and count)",
        ),
        (
            b'{"sku": "A", "delta": 1}',
            "delta: is not a known field (a snapshot line has sku and count)",
        ),
        (b"[" * 50_000, "line: not valid JSON"),
    ],
)
def test_an_unreadable_jsonl_line_is_a_problem(line: bytes, problem: str) -> None:
    lines = jsonl_lines(line + b'\n{"sku": "B", "count": 2}\n')

    assert (lines[0].fields, lines[0].problem) == (None, problem)
    assert lines[1].fields == {"sku": "B", "count": 2}


# --- change objects -------------------------------------------------------------------------


def test_a_line_is_a_producer_change_object_with_its_event_id_and_time() -> None:
    line = csv_lines(b"sku,count\nA-1,10\n")[0]

    assert change_object(line, 1001, IMPORT, AT) == {
        "campaign_id": 1001,
        "sku": "A-1",
        "count": 10,
        "event_id": f"{IMPORT}:2",
        "occurred_at": AT,
    }


def test_an_unreadable_line_keeps_its_text_and_campaign_as_raw_content() -> None:
    line = jsonl_lines(b"oops\n")[0]

    assert change_object(line, 1001, IMPORT, AT) == {
        "campaign_id": 1001,
        "line": "oops",
        "event_id": f"{IMPORT}:1",
    }


def test_split_lines_validates_like_a_producer_change() -> None:
    lines = csv_lines(b"sku,count\n A-1 ,10\nB,-4\n,3\nC,abc\nD,2000000001\nE,0\n")

    accepted, rejected = split_lines(lines, 1001, IMPORT, AT, NOW)

    assert accepted == [
        (
            2,
            Change(1001, "A-1", None, 10, f"{IMPORT}:2", datetime(2026, 11, 28, 11, tzinfo=UTC)),
        ),
        (7, Change(1001, "E", None, 0, f"{IMPORT}:7", datetime(2026, 11, 28, 11, tzinfo=UTC))),
    ]
    assert [(r.index, r.reason) for r in rejected] == [
        (3, "count: must be between 0 and 2,000,000,000"),
        (4, "sku: must not be empty or only whitespace"),
        (5, "count: must be a whole number written in digits (e.g. 12)"),
        (6, "count: must be between 0 and 2,000,000,000"),
    ]
    assert rejected[0].raw == {
        "campaign_id": 1001,
        "sku": "B",
        "count": -4,
        "event_id": f"{IMPORT}:3",
        "occurred_at": AT,
    }
    assert rejected[2].raw == {"campaign_id": 1001, "line": "C,abc", "event_id": f"{IMPORT}:5"}


def test_split_lines_refuses_json_types_that_are_not_integers() -> None:
    lines = jsonl_lines(b'{"sku": "A", "count": true}\n{"sku": 5, "count": 1}\n{"sku": "B"}\n')

    accepted, rejected = split_lines(lines, 1001, IMPORT, AT, NOW)

    assert accepted == []
    assert [(r.index, r.reason.split(":")[0]) for r in rejected] == [
        (1, "count"),
        (2, "sku"),
        (3, "delta/count"),
    ]


def test_split_lines_refuses_an_occurred_at_in_the_future() -> None:
    lines = csv_lines(b"sku,count\nA,1\n")
    future = (NOW + timedelta(hours=1)).isoformat()

    accepted, rejected = split_lines(lines, 1001, IMPORT, future, NOW)

    assert accepted == []
    assert rejected[0].reason.startswith("occurred_at: must not be more than 5 minutes ahead")
