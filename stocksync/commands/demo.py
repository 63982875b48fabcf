"""`stocksync demo`: the whole pipeline on private local services; 0 only when the Market is right.

A producer that knows only the contract sends a seeded sample stream; the demo shows progress,
waits until the sandbox holds the state the contract's formula gives, then prints a summary.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from stocksync import exit_codes
from stocksync.demo_stream import MIN_CHANGES, DemoStream, Outcome

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy import Engine

    from stocksync.demo_stack import DemoServices

HELP = "run the whole pipeline locally on sample changes and check what the Market got"
CHANGES_QUEUE = "stocks.changes"  # the contract's queue, named here: producers don't import us
PROGRESS_EVERY_SECONDS = 1.0
CHECK_EVERY_SECONDS = 0.25
POLL_SECONDS = 0.02
INTERRUPTED_EXIT_CODE = exit_codes.INTERRUPTED

_PENDING_KEYS = "SELECT count(*) FROM stock WHERE version > acked_version"
_REJECTED_COUNT = "SELECT count(*) FROM rejected"
_REJECTED = "SELECT task_id, position, reason, raw FROM rejected ORDER BY id"


EPILOG = (
    "The demo runs on services of its own: an embedded PostgreSQL in a temporary directory "
    "(--data-dir keeps it), the database as broker, the Market sandbox in this process with a "
    "random Api-Key, and `stocksync run` (worker and beat, drain every second) as a child. "
    "It ignores every STOCKSYNC_* variable and .env file, a broker URL included, so it never "
    "sends to a real broker, database or Market. It stops all of it on exit, Ctrl-C or failure. "
    "Exit codes: 0 PASS (the sandbox holds the expected state and exactly the invalid changes "
    "were rejected), 2 FAIL, 3 set-up error (a service would not start), 64 bad options, "
    "130 interrupted."
)


def configure(parser: argparse.ArgumentParser) -> None:
    """--changes, --seed, --duration, --timeout, --concurrency and --data-dir."""
    parser.epilog = EPILOG
    parser.add_argument(
        "--changes",
        type=int,
        default=3000,
        help=f"change objects to send, invalid and duplicates included (≥ {MIN_CHANGES}; 3000)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of the sample stream (42)")
    parser.add_argument(
        "--duration", type=float, default=15.0, help="seconds to spread the sending over (15)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds from the first message until the Market must be right (120)",
    )
    # The database broker is polled once a second and each worker process holds one message at
    # a time: more processes than cores keep the pushes flowing (they wait on I/O, not CPU).
    parser.add_argument(
        "--concurrency", type=int, default=4, help="worker processes (4)", metavar="N"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the embedded PostgreSQL here (default: a temporary directory, removed)",
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds like Ctrl-C does, through the teardown that stops every service.
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    """Sets up, sends, waits and reports; 0 on PASS, 2 on FAIL, 3 when set-up fails."""
    problem = _check_arguments(args)
    if problem:
        print(f"stocksync demo: {problem}", file=sys.stderr)
        return exit_codes.USAGE
    signal.signal(signal.SIGTERM, _on_sigterm)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    ignored = sorted(k for k in os.environ if k.startswith("STOCKSYNC_"))
    if ignored:
        # The demo never touches a configured service: a real broker's worker would take its
        # messages, and a real database or Market would get its sample stock.
        print(f"note: the demo ignores {', '.join(ignored)}: it runs on its own services")

    from stocksync.demo_stack import DemoError, DemoServices
    from stocksync.demo_stream import WAREHOUSE_GROUPS

    print("stocksync demo: starting private services", flush=True)
    try:
        with DemoServices(args.data_dir, WAREHOUSE_GROUPS, args.concurrency) as services:
            try:
                return _demo(args, services)
            finally:
                print("stopping", flush=True)
    except DemoError as exc:
        print(f"stocksync demo: {exc}", file=sys.stderr)
        return exit_codes.CANNOT_CHECK
    except KeyboardInterrupt:
        print("stocksync demo: interrupted; everything it started is stopped", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE


def _check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    if args.changes < MIN_CHANGES:
        return f"--changes must be at least {MIN_CHANGES}"
    if args.duration < 0 or args.timeout <= 0:
        return "--duration must be ≥ 0 and --timeout > 0"
    if args.concurrency < 1:
        return "--concurrency must be ≥ 1"
    return None


def _demo(args: argparse.Namespace, services: DemoServices) -> int:
    """Plans the stream, sends it as a contract-only producer, waits, and reports PASS or FAIL."""
    from celery import Celery

    from stocksync.demo_stream import expected_outcome, generate_stream
    from worker.database import make_engine

    engine = make_engine(services.database_url)
    # A producer as the contract describes one: a plain Celery app on the broker, nothing else.
    producer = Celery("demo-producer", broker=services.broker_url, set_as_current=False)
    try:
        stream = generate_stream(args.seed, args.changes, args.duration)
        outcome = expected_outcome(stream)
        campaigns = ", ".join(str(c) for c in outcome.expected)
        groups = "; ".join("+".join(str(c) for c in g) for g in stream.groups)
        print(
            f"sending {stream.total_changes:,} changes in {len(stream.messages)} messages over "
            f"~{args.duration:g}s (seed {args.seed}; {stream.invalid_changes} invalid, "
            f"{stream.duplicates} duplicates); {outcome.keys:,} stock keys expected at "
            f"campaigns {campaigns} (group {groups} under its first)",
            flush=True,
        )
        demo = _Demo(stream, outcome, services, engine)
        done = demo.send_and_watch(producer, args.timeout)
        return demo.summary(done)
    finally:
        producer.close()
        engine.dispose()


@dataclass(slots=True)
class _Demo:
    """One demo run: the plan, the services, and what the producer did so far."""

    stream: DemoStream
    outcome: Outcome
    services: DemoServices
    engine: Engine
    task_ids: list[str] = field(default_factory=list)
    sent_at: list[datetime] = field(default_factory=list)  # when send_task was called
    changes_sent: int = 0
    matching: int = 0  # keys the Market holds right, at the last check
    elapsed: float = 0.0  # seconds from the first message to the end of the wait

    def send_and_watch(self, producer: Celery, timeout: float) -> bool:
        """Sends each message when due, with progress, until the Market is right or time is up."""
        messages = self.stream.messages
        started = time.monotonic()
        deadline = started + timeout
        next_check = next_progress = started
        while True:
            now = time.monotonic()
            while len(self.task_ids) < len(messages) and (
                messages[len(self.task_ids)].at <= now - started
            ):
                message = messages[len(self.task_ids)]
                self.sent_at.append(datetime.now(UTC))
                result = producer.send_task(
                    "stocks.submit", kwargs={"changes": list(message.changes)}, queue=CHANGES_QUEUE
                )
                self.task_ids.append(str(result.id))
                self.changes_sent += len(message.changes)
            done = False
            if now >= next_check or now >= next_progress:
                # Reading the whole sandbox state is the costly part: a few times a second.
                next_check = now + CHECK_EVERY_SECONDS
                self.matching = self._matching_keys()
                done = (
                    len(self.task_ids) == len(messages)
                    and self.matching == self.outcome.keys
                    and self._scalar(_REJECTED_COUNT) == self.stream.invalid_changes
                )
            if done or now >= next_progress or now >= deadline:
                self._progress(now - started)
                next_progress = now + PROGRESS_EVERY_SECONDS
            if done or now >= deadline:
                self.elapsed = now - started
                return done
            time.sleep(POLL_SECONDS)

    def _scalar(self, sql: str) -> int:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return int(conn.execute(text(sql)).scalar_one())

    def _matching_keys(self) -> int:
        state = self.services.sandbox.state()
        return sum(
            1
            for campaign, skus in self.outcome.expected.items()
            for sku, count in skus.items()
            if state.get(str(campaign), {}).get(sku, {}).get("count") == count
        )

    def _progress(self, elapsed: float) -> None:
        total = self.stream.total_changes
        stats = self.services.sandbox.stats()
        print(
            f"[{elapsed:5.1f}s] sent {self.changes_sent:>{len(f'{total:,}')},}/{total:,} "
            f"changes | pending keys {self._scalar(_PENDING_KEYS):>5,} | "
            f"delivered {stats['skus_accepted']:>6,} SKUs in {stats['requests']:>4,} requests | "
            f"Market right for {self.matching:,}/{self.outcome.keys:,} keys",
            flush=True,
        )

    def _freshness(self, state: dict[str, Any]) -> list[float]:
        """Seconds from the send_task that settled each key to the Market accepting its value."""
        seconds = []
        for (campaign, sku), message in self.outcome.settled_by.items():
            entry = state.get(str(campaign), {}).get(sku)
            if entry is None or message >= len(self.sent_at):
                continue
            accepted = datetime.fromisoformat(entry["accepted_at"])
            # Two worker processes may apply messages out of order, so a key can settle a moment
            # before its settling message is sent: that counts as instant, not as negative.
            seconds.append(max(0.0, (accepted - self.sent_at[message]).total_seconds()))
        return seconds

    def summary(self, done: bool) -> int:
        """Prints the summary and PASS or FAIL; 0 only when the Market and rejections are right."""
        from sqlalchemy import text

        state = self.services.sandbox.state()
        stats = self.services.sandbox.stats()
        with self.engine.connect() as conn:
            rejected = [tuple(row) for row in conn.execute(text(_REJECTED))]
        actual = {
            int(campaign): {sku: entry["count"] for sku, entry in skus.items()}
            for campaign, skus in state.items()
        }
        wrong = state_differences(self.outcome.expected, actual)
        rejections_ok, rejection_lines = self._check_rejections(rejected)
        stream, requests = self.stream, stats["requests"]
        statuses = ", ".join(f"{n:,} x {s}" for s, n in sorted(stats["requests_by_status"].items()))
        fresh = self._freshness(state)
        valid = self.changes_sent - stream.invalid_changes - stream.duplicates

        print("\nsummary")
        print(
            f"  changes sent           {self.changes_sent:,} in {len(self.task_ids)} messages "
            f"({valid:,} valid, {stream.duplicates:,} duplicates, {stream.invalid_changes} invalid)"
        )
        print(f"  stock keys expected    {self.outcome.keys:,}")
        print(f"  SKU updates delivered  {stats['skus_accepted']:,}")
        print(f"  Market requests        {requests:,} ({statuses or 'none'})")
        if requests:
            print(f"  changes per request    {self.changes_sent / requests:,.1f}")
        print(f"  rejected changes       {len(rejected)} (expected {stream.invalid_changes}):")
        for line in rejection_lines:
            print(f"    {line}")
        if fresh:
            print(
                f"  freshness              p50 {percentile(fresh, 50):.2f}s, "
                f"p99 {percentile(fresh, 99):.2f}s, max {max(fresh):.2f}s "
                "(send_task -> the Market accepted the key's final value)"
            )
        if done:
            print(f"  Market right after     {self.elapsed:.1f}s from the first message")
        else:
            print(f"  timed out              after {self.elapsed:.1f}s from the first message")
        if wrong:
            print(f"  Market state wrong for {len(wrong)} keys, e.g.:")
            for line in wrong[:10]:
                print(f"    {line}")
        else:
            print(
                f"  Market state           equals the expected state ({self.outcome.keys:,} keys)"
            )
        passed = not wrong and rejections_ok
        print("PASS" if passed else "FAIL", flush=True)
        if not passed:
            tail = self.services.worker_log_tail()
            print(f"last lines of the worker's log:\n{tail}", file=sys.stderr)
        return exit_codes.OK if passed else exit_codes.ATTENTION

    def _check_rejections(self, rejected: list[tuple[Any, ...]]) -> tuple[bool, list[str]]:
        """True when exactly the invalid changes sent were rejected, each naming its field."""
        want = {
            (self.task_ids[index], position): field_name
            for index, message in enumerate(self.stream.messages[: len(self.task_ids)])
            for position, field_name in message.invalid.items()
        }
        got = {(task_id, position): reason for task_id, position, reason, _ in rejected}
        wrong_field = [
            k for k, name in want.items() if k in got and not got[k].startswith(f"{name}:")
        ]
        by_reason = Counter(reason for _, _, reason, _ in rejected)
        example = {reason: raw for _, _, reason, raw in reversed(rejected)}
        lines = [
            f"{count:>3} x {reason}  e.g. {_short(example[reason])}"
            for reason, count in by_reason.most_common()
        ]
        if missing := set(want) - set(got):
            lines.append(f"NOT rejected: {len(missing)} invalid changes")
        if unexpected := set(got) - set(want):
            lines.append(f"rejected although valid: {len(unexpected)} changes")
        if wrong_field:
            lines.append(f"rejected for another field than the one broken: {len(wrong_field)}")
        return not missing and not unexpected and not wrong_field, lines


def state_differences(
    expected: dict[int, dict[str, int]], actual: dict[int, dict[str, int]]
) -> list[str]:
    """Keys whose count differs, is missing, or should not be at the Market at all."""
    lines = []
    for campaign in sorted(set(expected) | set(actual)):
        want, got = expected.get(campaign, {}), actual.get(campaign, {})
        for sku in sorted(set(want) | set(got)):
            if want.get(sku) != got.get(sku):
                lines.append(
                    f"campaign {campaign} sku {sku!r}: expected {want.get(sku, 'nothing')}, "
                    f"the Market has {got.get(sku, 'nothing')}"
                )
    return lines


def percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def _short(raw: str, limit: int = 90) -> str:
    """A raw change as stored (JSON text), cut to one readable line."""
    return raw if len(raw) <= limit else raw[: limit - 1] + "…"
