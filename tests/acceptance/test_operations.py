"""Operator commands run as an operator runs them: `stocksync import`, `resync` and `rejected`.

Each test runs the real console script in a subprocess against a fresh migrated database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from domain.changes import Change
from tests.acceptance.conftest import STOCKSYNC, RunStocksync, clean_env
from worker.ingest import store_message

GROUPS = "[[1001, 1002]]"

CSV = "sku,count\nA-1,10\nA-2,0\n B-7 ,25\n"
CSV_VALUES = {"A-1": 10, "A-2": 0, "B-7": 25}


def _write(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def _values(engine: Engine, group_id: int) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT sku, value FROM stock WHERE group_id = :g"), {"g": group_id}
        )
        return {sku: int(value) for sku, value in rows}


def _count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar_one())


def _logged(engine: Engine) -> int:
    return _count(engine, "SELECT count(*) FROM change_log")


# --- import ---------------------------------------------------------------------------------


def test_import_csv_applies_absolute_counts_and_a_second_run_applies_nothing(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    snapshot = _write(tmp_path, "stock.csv", CSV)

    first = stocksync(
        "import", str(snapshot), "--campaign", "1001", STOCKSYNC_DATABASE_URL=database_url
    )

    assert first.returncode == 0, first.stderr
    assert "3 lines, 3 applied, 0 already applied, 0 rejected" in first.stdout
    assert _values(engine, 1001) == CSV_VALUES
    assert _logged(engine) == 3
    assert "100%" in first.stderr  # the progress bar reached its end

    # A sale after the snapshot: a re-run of the same file must not bring A-1 back to 10.
    later = datetime.now(UTC) + timedelta(seconds=1)
    sale = Change(1001, "A-1", -2, None, "order-1:line-1", later)
    store_message(engine, "producer-task", [(0, sale)], [], lambda c: c)
    assert _values(engine, 1001)["A-1"] == 8

    second = stocksync(
        "import", str(snapshot), "--campaign", "1001", STOCKSYNC_DATABASE_URL=database_url
    )

    assert second.returncode == 0, second.stderr
    assert "3 lines, 0 applied, 3 already applied, 0 rejected" in second.stdout
    assert _logged(engine) == 4
    assert _values(engine, 1001) == {**CSV_VALUES, "A-1": 8}


def test_import_event_ids_come_from_the_file_content_and_the_campaign(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    env = {"STOCKSYNC_DATABASE_URL": database_url}
    stocksync("import", str(_write(tmp_path, "a.csv", CSV)), "--campaign", "1001", **env)

    # The same lines in another file (one line more) are another snapshot: applied again.
    other = _write(tmp_path, "b.csv", CSV + "C-1,4\n")
    again = stocksync("import", str(other), "--campaign", "1001", **env)
    # The same file for another campaign applies there.
    elsewhere = stocksync(
        "import", str(_write(tmp_path, "c.csv", CSV)), "--campaign", "2001", **env
    )

    assert again.returncode == 0, again.stderr
    assert "4 lines, 4 applied, 0 already applied" in again.stdout
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "3 lines, 3 applied" in elsewhere.stdout
    assert _logged(engine) == 3 + 4 + 3
    assert _values(engine, 2001) == CSV_VALUES
    keys = _count(
        engine,
        "SELECT count(DISTINCT idempotency_key) FROM change_log WHERE idempotency_key "
        "LIKE 'e:import:%'",
    )
    assert keys == 10


def test_import_jsonl(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    snapshot = _write(
        tmp_path,
        "stock.jsonl",
        '{"sku": "A-1", "count": 12}\n\n'
        '{"count": 0, "sku": "0557722"}\n{"sku": "557722", "count": 3}\n',
    )

    result = stocksync(
        "import",
        str(snapshot),
        "--campaign",
        "1002",
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_WAREHOUSE_GROUPS=GROUPS,
    )

    assert result.returncode == 0, result.stderr
    assert "3 lines, 3 applied" in result.stdout
    assert _values(engine, 1001) == {"A-1": 12, "0557722": 0, "557722": 3}  # 1002 is 1001's group
    with engine.connect() as conn:
        logged = conn.execute(
            text("SELECT campaign_id, count, idempotency_key FROM change_log ORDER BY seq")
        ).all()
    assert [row.campaign_id for row in logged] == [1002, 1002, 1002]
    assert [row.idempotency_key.rsplit(":", 1)[1] for row in logged] == ["1", "3", "4"]


def test_import_with_an_explicit_format_reads_a_file_of_any_name(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    snapshot = _write(tmp_path, "export.txt", CSV)

    refused = stocksync(
        "import", str(snapshot), "--campaign", "1001", STOCKSYNC_DATABASE_URL=database_url
    )
    read = stocksync(
        "import",
        str(snapshot),
        "--campaign",
        "1001",
        "--format",
        "csv",
        STOCKSYNC_DATABASE_URL=database_url,
    )

    assert refused.returncode == 64
    assert "--format" in refused.stderr
    assert read.returncode == 0, read.stderr
    assert _values(engine, 1001) == CSV_VALUES


def test_a_bad_line_is_reported_and_kept_and_the_other_lines_apply(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    snapshot = _write(tmp_path, "stock.csv", "sku,count\nA-1,10\nA-2,-5\nA-3,lots\nA-4,4\n")
    env = {"STOCKSYNC_DATABASE_URL": database_url}

    result = stocksync("import", str(snapshot), "--campaign", "1001", **env)

    assert result.returncode == 2
    assert "4 lines, 2 applied, 0 already applied, 2 rejected" in result.stdout
    assert "line 3: count: must be between 0 and 2,000,000,000" in result.stdout
    assert "line 4: count: must be a whole number" in result.stdout
    assert _values(engine, 1001) == {"A-1": 10, "A-4": 4}
    with engine.connect() as conn:
        kept = conn.execute(
            text(
                "SELECT task_id, position, campaign_id, raw, reason FROM rejected ORDER BY position"
            )
        ).all()
    assert [(r.position, r.campaign_id) for r in kept] == [(3, 1001), (4, 1001)]
    assert all(r.task_id.startswith("import:") and r.task_id.endswith(":1001") for r in kept)
    assert json.loads(kept[0].raw)["count"] == -5
    assert json.loads(kept[1].raw)["line"] == "A-3,lots"

    listed = stocksync("rejected", "--campaign", "1001", "--json", **env)
    assert [(i["position"], i["reason"][:5]) for i in json.loads(listed.stdout)["items"]] == [
        (3, "count"),
        (4, "count"),
    ]

    # Again: still exit 2 with the same report, nothing applied or kept twice.
    again = stocksync("import", str(snapshot), "--campaign", "1001", **env)
    assert again.returncode == 2
    assert "4 lines, 0 applied, 2 already applied, 2 rejected" in again.stdout
    assert _count(engine, "SELECT count(*) FROM rejected") == 2
    assert _logged(engine) == 2


def test_import_at_is_the_changes_time_and_part_of_the_snapshot_identity(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    snapshot = _write(tmp_path, "stock.csv", CSV)
    env = {"STOCKSYNC_DATABASE_URL": database_url}
    at = "2026-11-28T10:00:00+03:00"

    first = stocksync("import", str(snapshot), "--campaign", "1001", "--at", at, **env)
    same = stocksync(
        "import", str(snapshot), "--campaign", "1001", "--at", "2026-11-28T07:00:00Z", **env
    )
    recount = stocksync(
        "import", str(snapshot), "--campaign", "1001", "--at", "2026-11-28T08:00:00Z", **env
    )

    assert (first.returncode, same.returncode, recount.returncode) == (0, 0, 0), recount.stderr
    assert "3 already applied" in same.stdout  # the same instant, written differently
    assert "3 applied" in recount.stdout
    with engine.connect() as conn:
        times = (
            conn.execute(text("SELECT DISTINCT occurred_at FROM change_log ORDER BY 1"))
            .scalars()
            .all()
        )
    assert times == [
        datetime(2026, 11, 28, 7, tzinfo=UTC),
        datetime(2026, 11, 28, 8, tzinfo=UTC),
    ]


def test_import_without_at_uses_its_start_time(
    stocksync: RunStocksync, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    before = datetime.now(UTC)

    result = stocksync(
        "import",
        str(_write(tmp_path, "s.csv", CSV)),
        "--campaign",
        "1001",
        STOCKSYNC_DATABASE_URL=database_url,
    )

    assert result.returncode == 0, result.stderr
    with engine.connect() as conn:
        times = conn.execute(text("SELECT DISTINCT occurred_at FROM change_log")).scalars().all()
    assert len(times) == 1
    assert before - timedelta(seconds=1) <= times[0] <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("sku;count\nA-1;3\n", (), "header must be sku,count"),
        ("", (), "empty"),
        (CSV, ("--at", "2999-01-01T00:00:00Z"), "more than 5 minutes ahead"),
        (CSV, ("--at", "2026-11-28T10:00:00"), "UTC offset"),
        (CSV, ("--at", "tomorrow"), "UTC offset"),
    ],
)
def test_an_unusable_file_or_option_exits_64_and_imports_nothing(
    stocksync: RunStocksync,
    database_url: str,
    engine: Engine,
    tmp_path: Path,
    content: str,
    args: tuple[str, ...],
    message: str,
) -> None:
    snapshot = _write(tmp_path, "stock.csv", content)

    result = stocksync(
        "import", str(snapshot), "--campaign", "1001", *args, STOCKSYNC_DATABASE_URL=database_url
    )

    assert result.returncode == 64
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert _logged(engine) == 0
    assert _count(engine, "SELECT count(*) FROM rejected") == 0


def test_a_missing_file_exits_64(stocksync: RunStocksync, database_url: str) -> None:
    result = stocksync(
        "import", "nowhere.csv", "--campaign", "1001", STOCKSYNC_DATABASE_URL=database_url
    )

    assert result.returncode == 64
    assert "nowhere.csv: not a readable file" in result.stderr


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


# The command runs as the grandchild of a small launcher, which reports its peak RSS. A child's
# ru_maxrss counts the RSS of the process it was forked from (Linux keeps the pre-exec high
# water mark), so measured straight from pytest (hundreds of MB after a long run) it says nothing
# about the command.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run_measured(tmp_path: Path, *args: str, **variables: str) -> Measured:
    """Runs `stocksync ARGS…` and reads its own peak RSS (through the launcher above)."""
    out, err, peak = tmp_path / "out.txt", tmp_path / "err.txt", tmp_path / "peak_rss_kb"
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(peak), str(STOCKSYNC), *args],
            cwd=tmp_path,
            env=clean_env(**variables),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    return Measured(
        process.returncode,
        out.read_text(),
        err.read_text(),
        int(peak.read_text()) / 1024,  # kilobytes on Linux
        time.monotonic() - started,
    )


@pytest.mark.slow
def test_a_file_of_50000_lines_imports_in_constant_memory(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    small = tmp_path / "small.csv"
    small.write_text("sku,count\n" + "".join(f"S-{n},{n}\n" for n in range(1_000)))
    big = tmp_path / "big.csv"
    with big.open("w") as f:
        f.write("sku,count\n")
        for n in range(50_000):
            f.write(f"SKU-{n:06d}-{'x' * 240},{n % 1000}\n")  # 12.5 MB in all
    env = {"STOCKSYNC_DATABASE_URL": database_url}

    baseline = _run_measured(tmp_path, "import", str(small), "--campaign", "2001", **env)
    measured = _run_measured(tmp_path, "import", str(big), "--campaign", "1001", **env)

    assert baseline.returncode == 0, baseline.stderr
    assert measured.returncode == 0, measured.stderr
    assert "50,000 lines, 50,000 applied" in measured.stdout
    assert _count(engine, "SELECT count(*) FROM stock WHERE group_id = 1001") == 50_000
    assert _count(engine, "SELECT sum(value) FROM stock WHERE group_id = 1001") == 50 * 499_500
    # 50 times the lines, about the memory of the small file: nothing grows with the file.
    assert measured.peak_rss_mb < 200, measured
    assert measured.peak_rss_mb - baseline.peak_rss_mb < 15, (baseline, measured)
    assert measured.seconds < 120, measured
    print(
        f"peak RSS {baseline.peak_rss_mb:.0f} MB for 1,000 lines, {measured.peak_rss_mb:.0f} MB "
        f"for 50,000 lines in {measured.seconds:.1f} s"
    )
    progress = [line for line in measured.stderr.splitlines() if line.startswith("importing")]
    assert len(progress) >= 10  # a line per tenth when stderr is not a terminal
    assert progress[-1] == "importing big.csv: 100% (50,000 lines)"


# --- resync ---------------------------------------------------------------------------------

_OUTBOX = """
    INSERT INTO stock (group_id, sku, delta_sum, version, changed_at, acked_version, acked_value,
                       acked_at, parked_version, parked_reason)
    VALUES
        (1001, 'A-1', 5, 3, '2026-11-28 08:00+00', 3, 5, '2026-11-28 08:01+00', NULL, NULL),
        (1001, 'A-2', 7, 2, '2026-11-28 08:00+00', 1, 6, '2026-11-28 08:01+00', NULL, NULL),
        (1001, 'P-1', 9, 4, '2026-11-28 08:00+00', 3, 8, '2026-11-28 08:01+00', 4,
         'Offer P-1 is not found'),
        (2001, 'A-1', 1, 1, '2026-11-28 08:00+00', 1, 1, '2026-11-28 08:01+00', NULL, NULL);
"""


def _versions(engine: Engine) -> dict[tuple[int, str], tuple[int, bool, bool]]:
    """(version, changed just now, eligible to be claimed) per key."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("""
                SELECT group_id, sku, version, changed_at > now() - interval '1 minute' AS fresh,
                       version > acked_version
                       AND (parked_version IS NULL OR parked_version < version) AS eligible
                FROM stock
            """)
        ).all()
    return {(r.group_id, r.sku): (r.version, r.fresh, r.eligible) for r in rows}


def _insert_outbox(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(_OUTBOX))


def test_resync_of_a_group_campaign_bumps_every_key_of_the_group_only(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_outbox(engine)

    result = stocksync(
        "resync",
        "--campaign",
        "1002",
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_WAREHOUSE_GROUPS=GROUPS,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "campaign 1002 (warehouse group sent to 1001): 3 keys will be sent again"
    )
    assert _versions(engine) == {
        (1001, "A-1"): (4, True, True),
        (1001, "A-2"): (3, True, True),
        (1001, "P-1"): (5, True, True),  # un-parked: its parked version is now behind
        (2001, "A-1"): (1, False, False),
    }
    assert _values(engine, 1001) == {"A-1": 5, "A-2": 7, "P-1": 9}


def test_resync_of_listed_skus_bumps_those_and_reports_unknown_ones(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_outbox(engine)

    result = stocksync(
        "resync",
        "--campaign",
        "1001",
        "--sku",
        "P-1",
        " A-1 ",
        "--sku",
        "NOPE",
        STOCKSYNC_DATABASE_URL=database_url,
    )

    assert result.returncode == 2
    assert result.stdout.strip() == "campaign 1001: 2 keys will be sent again"
    assert "no key for SKU 'NOPE'" in result.stderr
    versions = _versions(engine)
    assert versions[(1001, "A-1")] == (4, True, True)
    assert versions[(1001, "P-1")] == (5, True, True)
    assert versions[(1001, "A-2")] == (2, False, True)
    assert versions[(2001, "A-1")] == (1, False, False)


def test_resync_of_a_campaign_without_keys_exits_2(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_outbox(engine)

    result = stocksync("resync", "--campaign", "1002", STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 2
    assert "campaign 1002 has no keys" in result.stderr
    assert result.stdout == ""
    assert all(not fresh for _, fresh, _ in _versions(engine).values())


# --- rejected -------------------------------------------------------------------------------

_REFUSALS = """
    INSERT INTO rejected (received_at, task_id, position, campaign_id, raw, reason)
    VALUES
        (now() - interval '3 hours', 'task-old', 0, 1002, '{"campaign_id": 1002}',
         'sku: must not be empty or only whitespace'),
        (now() - interval '10 minutes', 'task-2001', 1, 2001, '{"campaign_id": 2001}',
         'count: must be between 0 and 2,000,000,000'),
        (now() - interval '5 minutes', 'task-bad', -1, NULL, '"garbage"',
         'changes: must be a list of change objects');
    INSERT INTO stock (group_id, sku, delta_sum, version, changed_at, acked_version,
                       parked_version, parked_reason)
    VALUES
        (1001, 'P-1', 3, 2, now() - interval '20 minutes', 1, 2, 'Offer P-1 is not found'),
        -- parked before, but its value changed since: waiting to be sent, no longer parked
        (1001, 'P-2', 3, 3, now() - interval '1 minute', 1, 2, 'Offer P-2 is not found'),
        (1001, 'OK-1', 3, 2, now() - interval '1 minute', 2, NULL, NULL);
"""


def _insert_refusals(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(_REFUSALS))


def _listed(stocksync: RunStocksync, database_url: str, *args: str) -> list[tuple[Any, ...]]:
    result = stocksync(
        "rejected",
        "--json",
        *args,
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_WAREHOUSE_GROUPS=GROUPS,
    )
    assert result.returncode == 0, result.stderr
    return [
        (i["kind"], i["campaign_id"], i["task_id"] or i["sku"], i["reason"])
        for i in json.loads(result.stdout)["items"]
    ]


UNREADABLE = ("unreadable", None, "task-bad", "changes: must be a list of change objects")
REJECTED_2001 = ("rejected", 2001, "task-2001", "count: must be between 0 and 2,000,000,000")
PARKED = ("parked", 1001, "P-1", "Offer P-1 is not found")
REJECTED_OLD = ("rejected", 1002, "task-old", "sku: must not be empty or only whitespace")


def test_rejected_lists_refusals_unreadable_messages_and_parked_skus_newest_first(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_refusals(engine)

    assert _listed(stocksync, database_url) == [UNREADABLE, REJECTED_2001, PARKED, REJECTED_OLD]


def test_rejected_for_a_campaign_covers_its_warehouse_group(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_refusals(engine)

    assert _listed(stocksync, database_url, "--campaign", "1001") == [PARKED, REJECTED_OLD]
    assert _listed(stocksync, database_url, "--campaign", "1002") == [PARKED, REJECTED_OLD]
    assert _listed(stocksync, database_url, "--campaign", "2001") == [REJECTED_2001]
    assert _listed(stocksync, database_url, "--campaign", "3001") == []


def test_rejected_since_a_duration_or_an_instant(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_refusals(engine)
    fifteen_minutes_ago = (datetime.now(UTC) - timedelta(minutes=15)).astimezone()

    assert _listed(stocksync, database_url, "--since", "1h") == [UNREADABLE, REJECTED_2001, PARKED]
    assert _listed(stocksync, database_url, "--since", fifteen_minutes_ago.isoformat()) == [
        UNREADABLE,
        REJECTED_2001,
    ]
    assert _listed(stocksync, database_url, "--since", "1h", "--campaign", "1002") == [PARKED]


def test_rejected_limit_keeps_the_newest_and_says_there_are_more(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_refusals(engine)
    env = {"STOCKSYNC_DATABASE_URL": database_url}

    limited = stocksync("rejected", "--json", "--limit", "2", **env)
    everything = stocksync("rejected", "--json", "--limit", "4", **env)

    assert [i["task_id"] for i in json.loads(limited.stdout)["items"]] == ["task-bad", "task-2001"]
    assert json.loads(limited.stdout)["more"] is True
    assert json.loads(everything.stdout)["more"] is False


def test_rejected_table_shows_kind_where_and_reason(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_refusals(engine)

    result = stocksync("rejected", "--limit", "3", STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 0, result.stderr
    header, *rows, note = result.stdout.splitlines()
    assert header.split()[:5] == ["at", "(UTC)", "kind", "campaign", "where"]
    assert rows[0].split()[2:5] == ["unreadable", "-", "task-bad"]
    assert rows[1].split()[2:5] == ["rejected", "2001", "task-2001"]
    assert rows[2].split()[2:6] == ["parked", "1001", "sku", "P-1"]
    assert "Offer P-1 is not found" in rows[2]
    assert "--limit" in note


def test_rejected_of_an_empty_database_and_a_bad_since(
    stocksync: RunStocksync, database_url: str
) -> None:
    empty = stocksync("rejected", STOCKSYNC_DATABASE_URL=database_url)
    bad = stocksync("rejected", "--since", "yesterday", STOCKSYNC_DATABASE_URL=database_url)

    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.strip() == "nothing rejected, unreadable or parked"
    assert bad.returncode == 64
    assert "'yesterday' is neither a duration nor an ISO 8601 date-time" in bad.stderr


# --- --json of every command that reports ---------------------------------------------------


def test_import_json_reports_what_was_applied_and_rejected(
    stocksync: RunStocksync, database_url: str, tmp_path: Path
) -> None:
    snapshot = _write(tmp_path, "stock.csv", "sku,count\nA-1,10\nA-2,lots\n")

    result = stocksync(
        "import", str(snapshot), "--campaign", "1001", "--json", STOCKSYNC_DATABASE_URL=database_url
    )

    assert result.returncode == 2, result.stderr  # a line rejected: needs attention
    report = json.loads(result.stdout)
    assert report["import_id"].startswith("import:")
    assert {k: report[k] for k in ("file", "campaign", "lines", "applied", "rejected")} == {
        "file": str(snapshot),
        "campaign": 1001,
        "lines": 2,
        "applied": 1,
        "rejected": 1,
    }
    assert report["duplicates"] == 0
    (rejection,) = report["first_rejections"]
    assert rejection["line"] == 3
    assert rejection["reason"].startswith("count: must be a whole number")


def test_resync_json_reports_the_keys_and_unknown_skus(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_outbox(engine)
    env = {"STOCKSYNC_DATABASE_URL": database_url, "STOCKSYNC_WAREHOUSE_GROUPS": GROUPS}

    result = stocksync("resync", *("--campaign", "1002", "--sku", "A-1", "NOPE"), "--json", **env)

    assert result.returncode == 2, result.stderr  # an unknown SKU: needs attention
    assert json.loads(result.stdout) == {
        "campaign": 1002,
        "group_id": 1001,
        "resynced": 1,
        "unknown_skus": ["NOPE"],
    }


def test_replay_json_reports_what_was_skipped_and_why(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    from worker.ingest import store_unreadable

    store_unreadable(engine, "refused:abc", "garbage", "content type: pickle")

    # Neither message is a stocks.submit call: nothing reaches the broker (none is configured)
    result = stocksync(
        "replay", "refused:abc", "no-such-id", "--json", STOCKSYNC_DATABASE_URL=database_url
    )

    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout) == {
        "replayed": [],
        "skipped": [
            {"task_id": "refused:abc", "reason": "not replayable (not a stocks.submit call)"},
            {"task_id": "no-such-id", "reason": "no unreadable message with this id"},
        ],
    }


def test_prune_and_migrate_json(stocksync: RunStocksync, database_url: str) -> None:
    pruned = stocksync("prune", "--days", "7", "--json", STOCKSYNC_DATABASE_URL=database_url)
    migrated = stocksync("migrate", "--json", STOCKSYNC_DATABASE_URL=database_url)

    assert (pruned.returncode, migrated.returncode) == (0, 0), pruned.stderr + migrated.stderr
    assert json.loads(pruned.stdout) == {"days": 7.0, "changes": 0, "rejected": 0}
    migration = json.loads(migrated.stdout)
    assert migration["head"] is True
    assert migration["revision"].isdigit()
