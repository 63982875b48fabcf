"""The operator statements of `worker.operations` against real PostgreSQL, below the CLI."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from sqlalchemy import Engine, text

from domain.snapshot import SnapshotFormat, read_snapshot
from worker.operations import REJECTIONS_KEPT, ImportReport, import_snapshot, resync_group

IMPORT = "import:00000000000000aa:1001"


def _keys(engine: Engine, group_id: int, count: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("""
                INSERT INTO stock (group_id, sku, delta_sum, version, acked_version)
                SELECT :g, 'K-' || n, n, 1, 1 FROM generate_series(1, :count) AS n
            """),
            {"g": group_id, "count": count},
        )


def _versions(engine: Engine) -> dict[tuple[int, str], int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT group_id, sku, version FROM stock"))
        return {(g, s): int(v) for g, s, v in rows}


def test_resync_in_chunks_bumps_every_key_of_the_group_exactly_once(engine: Engine) -> None:
    _keys(engine, 1001, 5)
    _keys(engine, 2001, 2)

    assert resync_group(engine, 1001, chunk_keys=2) == 5

    versions = _versions(engine)
    assert {sku: v for (g, sku), v in versions.items() if g == 1001} == {
        f"K-{n}": 2 for n in range(1, 6)
    }
    assert {v for (g, _), v in versions.items() if g == 2001} == {1}


def test_resync_in_chunks_that_divide_the_keys_evenly(engine: Engine) -> None:
    _keys(engine, 1001, 4)

    assert resync_group(engine, 1001, chunk_keys=2) == 4
    assert set(_versions(engine).values()) == {2}


def test_resync_of_a_group_without_keys_is_zero(engine: Engine) -> None:
    _keys(engine, 2001, 2)

    assert resync_group(engine, 1001, chunk_keys=2) == 0
    assert set(_versions(engine).values()) == {1}


def test_import_commits_chunk_by_chunk_and_keeps_the_first_rejections(engine: Engine) -> None:
    bad = [f"BAD-{n},x" for n in range(REJECTIONS_KEPT + 3)]
    content = "\n".join(["sku,count", "A,1", "B,2", *bad, "C,3"]) + "\n"
    seen: list[tuple[int, int, int]] = []

    def on_chunk(report: ImportReport, offset: int) -> None:
        with engine.connect() as conn:
            committed = conn.execute(text("SELECT count(*) FROM change_log")).scalar_one()
        seen.append((report.lines, offset, int(committed)))

    report = import_snapshot(
        engine,
        read_snapshot(io.BytesIO(content.encode()), SnapshotFormat.CSV),
        campaign_id=1001,
        import_identity=IMPORT,
        occurred_at=datetime.now(UTC).isoformat(),
        group_of=lambda c: c,
        on_chunk=on_chunk,
        chunk_lines=4,
    )

    assert (report.lines, report.applied, report.duplicates, report.rejected) == (16, 3, 0, 13)
    assert [r.index for r in report.first_rejections] == list(range(4, 4 + REJECTIONS_KEPT))
    assert [lines for lines, _, _ in seen] == [4, 8, 12, 16]
    assert [committed for _, _, committed in seen] == [2, 2, 2, 3]  # each chunk committed
    assert seen[-1][1] == len(content.encode())
    offsets = [offset for _, offset, _ in seen]
    assert offsets == sorted(offsets)
