"""`stocksync import FILE --campaign N [--format F] [--at T] [--json]`: apply a stock snapshot."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.exc import OperationalError

from domain.changes import validate_change
from domain.snapshot import (
    SnapshotError,
    SnapshotFormat,
    format_for,
    import_id,
    read_snapshot,
)
from stocksync import exit_codes
from stocksync.json_output import add_json_option, print_json
from stocksync.migrations_runner import resolve_database_url
from worker.database import make_engine
from worker.operations import ImportReport, import_snapshot
from worker.settings import load_settings

HELP = "apply an inventory snapshot file (CSV sku,count or JSON Lines) as absolute counts"
EPILOG = """\
Every data line is a change {"campaign_id": N, "sku": …, "count": …, "event_id": …,
"occurred_at": …}, validated like a producer's. The file is read twice (once to hash it) and
applied in chunks of 1,000 lines, each in its own transaction; memory does not grow with it.

Idempotent: the event ids are import:<first 16 hex of the file's SHA-256>:<campaign>:<line>
(with the --at instant before the line when given), so the same file imported again into the
same campaign applies nothing twice, and an interrupted import can simply be run again. The
default occurred_at, the import's start time, is not part of that identity; an identical
recount taken later must be given its own --at to apply again.

Rejected lines are kept like producers' rejected changes (task id = the import id, position =
the line number, see `stocksync rejected`). Exit 0 when every line was applied or already applied,
2 when some lines were rejected (the others are applied), 64 when the file or an option cannot be
used (nothing is imported), 3 when the database failed midway, 130 when interrupted.
"""
REJECTIONS_SHOWN = 10
RESUME = "the chunks committed so far stay applied: run the same command again for the rest"
HASH_BLOCK = 1 << 20
PROGRESS_WIDTH = 30
PROGRESS_REDRAW_SECONDS = 0.1


def configure(parser: argparse.ArgumentParser) -> None:
    """FILE, --campaign (required), --format and --at."""
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("file", metavar="FILE", help="the snapshot: a CSV or JSON Lines file")
    parser.add_argument(
        "--campaign", type=int, required=True, metavar="N", help="the campaign counted"
    )
    parser.add_argument(
        "--format",
        choices=[f.value for f in SnapshotFormat],
        help="the file's format (default: from its extension, .csv or .jsonl/.ndjson)",
    )
    parser.add_argument(
        "--at",
        metavar="ISO-DATETIME",
        help="when the counts were taken, with a UTC offset (default: the import's start)",
    )
    add_json_option(
        parser,
        '{"file", "campaign", "import_id", "lines", "applied", "duplicates", "rejected", '
        '"first_rejections": [{"line", "reason"}]}',
    )


class Progress:
    """A progress bar on a stream: redrawn in place on a terminal, a line per 10% otherwise."""

    def __init__(self, stream: IO[str], label: str, total_bytes: int) -> None:
        self.stream = stream
        self.label = label
        self.total = max(total_bytes, 1)
        self.empty = total_bytes == 0
        self.tty = stream.isatty()
        self.last_draw = 0.0
        self.last_decile = -1

    def update(self, done_bytes: int, lines: int, final: bool = False) -> None:
        """Shows `done_bytes` of the total and the lines read so far."""
        fraction = 1.0 if self.empty else min(done_bytes / self.total, 1.0)
        percent = int(fraction * 100)
        if self.tty:
            now = time.monotonic()
            if not final and now - self.last_draw < PROGRESS_REDRAW_SECONDS:
                return
            self.last_draw = now
            filled = int(fraction * PROGRESS_WIDTH)
            bar = "#" * filled + "." * (PROGRESS_WIDTH - filled)
            end = "\n" if final else ""
            self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% {lines:,} lines{end}")
        else:
            decile = percent // 10
            if decile <= self.last_decile:
                return
            self.last_decile = decile
            self.stream.write(f"{self.label}: {percent}% ({lines:,} lines)\n")
        self.stream.flush()


def _sha256(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while block := stream.read(HASH_BLOCK):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def _fail(message: str, code: int = exit_codes.USAGE) -> int:
    print(f"stocksync import: {message}", file=sys.stderr)
    return code


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _report(report: ImportReport, name: str, campaign_id: int, identity: str) -> None:
    print(
        f"imported {name} into campaign {campaign_id}: {_plural(report.lines, 'line')}, "
        f"{report.applied:,} applied, {report.duplicates:,} already applied, "
        f"{report.rejected:,} rejected (import id {identity})"
    )
    if report.rejected:
        shown = report.first_rejections[:REJECTIONS_SHOWN]
        print(
            f"rejected lines (first {len(shown)} of {report.rejected:,}; all of them: "
            f"stocksync rejected --campaign {campaign_id}):"
        )
        for rejection in shown:
            print(f"  line {rejection.index}: {rejection.reason}")


def _json(report: ImportReport, file: str, campaign_id: int, identity: str) -> dict[str, Any]:
    return {
        "file": file,
        "campaign": campaign_id,
        "import_id": identity,
        "lines": report.lines,
        "applied": report.applied,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
        "first_rejections": [
            {"line": r.index, "reason": r.reason} for r in report.first_rejections
        ],
    }


class _BadOptions(ValueError):
    """The file or an option cannot be used: nothing is imported."""


def _options(args: argparse.Namespace, started: datetime) -> tuple[SnapshotFormat, datetime | None]:
    """The file's format and the --at instant, or `_BadOptions` saying what is wrong."""
    if not Path(args.file).is_file():
        raise _BadOptions(f"{args.file}: not a readable file")
    try:
        fmt = format_for(Path(args.file).name, args.format)
    except SnapshotError as exc:
        raise _BadOptions(str(exc)) from None
    at = None
    if args.at is not None:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise _BadOptions(
                f"--at {args.at!r}: must be an ISO 8601 date-time with a UTC offset"
            ) from None
    # The options checked as one change would be: a bad --campaign or --at fails up front.
    probe = validate_change(
        {
            "campaign_id": args.campaign,
            "sku": "-",
            "count": 0,
            "occurred_at": _occurred_at(args, started),
        },
        started,
    )
    if isinstance(probe, str):
        raise _BadOptions(f"--campaign/--at: {probe}")
    return fmt, at


def _occurred_at(args: argparse.Namespace, started: datetime) -> str:
    return str(args.at) if args.at is not None else started.isoformat()


def _explain(exc: BaseException, file: str) -> tuple[str, int]:
    """What an import stopped by `exc` says, and its exit code."""
    if isinstance(exc, SnapshotError):
        return f"{file}: {exc}; nothing was imported", exit_codes.USAGE
    if isinstance(exc, OSError):
        return f"{file}: {exc.strerror or exc}", exit_codes.USAGE
    if isinstance(exc, OperationalError):
        return f"database error ({exc.orig}); {RESUME}", exit_codes.CANNOT_CHECK
    return f"interrupted; {RESUME}", exit_codes.INTERRUPTED


def run(args: argparse.Namespace) -> int:
    """Applies the file; 0 when every line is applied (now or before), 2 when some were rejected."""
    settings = load_settings()
    started = datetime.now(UTC)
    try:
        fmt, at = _options(args, started)
    except _BadOptions as exc:
        return _fail(str(exc))
    path = Path(args.file)
    engine = make_engine(resolve_database_url(settings), settings, long_statements=True)
    try:
        with path.open("rb") as stream:
            before = os.fstat(stream.fileno())
            digest, size = _sha256(stream)
            identity = import_id(digest, args.campaign, at)
            stream.seek(0)
            progress = Progress(sys.stderr, f"importing {path.name}", size)
            report = import_snapshot(
                engine,
                read_snapshot(stream, fmt),
                campaign_id=args.campaign,
                import_identity=identity,
                occurred_at=_occurred_at(args, started),
                group_of=settings.group_of,
                on_chunk=lambda so_far, offset: progress.update(offset, so_far.lines),
            )
            progress.update(size, report.lines, final=True)
            after = os.fstat(stream.fileno())
    except (SnapshotError, OSError, OperationalError, KeyboardInterrupt) as exc:
        return _fail(*_explain(exc, args.file))
    finally:
        engine.dispose()
    if args.json:
        print_json(_json(report, str(path), args.campaign, identity))
    else:
        _report(report, path.name, args.campaign, identity)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return _fail(
            f"{args.file} changed while it was imported: its lines were applied under the "
            "import id of its first reading; import it again once it is complete",
            exit_codes.ATTENTION,
        )
    return exit_codes.ATTENTION if report.rejected else exit_codes.OK
