"""The sandbox's shared memory: accepted stock, rate windows, in-flight counts, request log, stats.

One lock guards everything; the HTTP threads hold it only for short bookkeeping, never while
sleeping or validating, so the lock is not what limits throughput.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from sandbox.config import SandboxConfig
from sandbox.ledger import plain, select
from sandbox.read_rules import read_limit
from sandbox.read_store import ReadBook
from sandbox.rules import StockUpdate

if TYPE_CHECKING:
    from sandbox.accounts import AccountsState
    from sandbox.v3 import V3Store

# X-RateLimit-Resource-Limit when the limit is switched off: an integer every client can parse
# that no sane client will ever run down.
UNLIMITED_HEADER_VALUE = 2**31 - 1


class RollingWindow:
    """Amounts stamped with monotonic times; `total` is the sum of those still inside the window."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[tuple[float, int]] = deque()
        self.total = 0

    def purge(self, now: float, window: float) -> None:
        """Drops the amounts that are `window` seconds old or older."""
        entries = self.entries
        while entries and entries[0][0] <= now - window:
            self.total -= entries.popleft()[1]

    def add(self, now: float, amount: int) -> None:
        """Counts `amount` at `now`."""
        self.entries.append((now, amount))
        self.total += amount

    def time_until_free(self, now: float, window: float, needed: int) -> float:
        """The monotonic time when at least `needed` counted units have left the window."""
        freed = 0
        for stamp, amount in self.entries:
            freed += amount
            if freed >= needed:
                return stamp + window
        # More is needed than the window holds (a request larger than the limit): say when it
        # is empty, so a client that waits is not told to come back at once.
        return self.entries[-1][0] + window if self.entries else now + window

    def oldest_leaves(self, now: float, window: float) -> float:
        """When the oldest amount leaves the window; an empty window resets a window from now."""
        return self.entries[0][0] + window if self.entries else now + window


@dataclass(frozen=True, slots=True)
class Faults:
    """What fault injection decided for one request."""

    latency_seconds: float
    drop_before: bool
    error_500: bool
    error_420: bool
    drop_after: bool


@dataclass(frozen=True, slots=True)
class Reservation:
    """The rate limiter's answer: `ok`, else the monotonic time the request would fit."""

    ok: bool
    until: float


def http_date(monotonic_at: float) -> str:
    """An RFC 822 date for a monotonic instant, rounded up to the second so waiting is enough."""
    wall = time.time() + (monotonic_at - time.monotonic())
    return format_datetime(datetime.fromtimestamp(math.ceil(wall), UTC), usegmt=True)


class ParallelGate:
    """Requests in flight and admitted per key (campaign or business); the caller holds its lock."""

    def __init__(self) -> None:
        self.in_flight: dict[int, int] = defaultdict(int)
        self.admitted: dict[int, int] = defaultdict(int)

    def begin(self, key: int, limit: int, stats: dict[str, Any]) -> bool:
        """Counts a request in flight (peak in `stats`); True when it is within `limit`."""
        self.in_flight[key] += 1
        stats["max_parallel_seen"] = max(stats["max_parallel_seen"], self.in_flight[key])
        if self.admitted[key] >= limit:
            return False
        self.admitted[key] += 1
        return True

    def end(self, key: int, admitted: bool) -> None:
        """Undoes `begin`."""
        self.in_flight[key] -= 1
        if admitted:
            self.admitted[key] -= 1

    def busy(self) -> dict[str, int]:
        """The keys with requests in flight, as JSON."""
        return {str(k): n for k, n in sorted(self.in_flight.items()) if n}


def reserve_in(rate: RollingWindow, amount: int, limit: int | None, window: float) -> Reservation:
    """The rolling-window rule shared by every limited resource; the caller holds the lock."""
    now = time.monotonic()
    rate.purge(now, window)
    if limit is not None and rate.total + amount > limit:
        until = rate.time_until_free(now, window, rate.total + amount - limit)
        return Reservation(ok=False, until=until)
    rate.add(now, amount)
    return Reservation(ok=True, until=now)


def window_headers(
    rate: RollingWindow | None, limit: int | None, window: float, until: float | None
) -> dict[str, str]:
    """The three X-RateLimit-Resource-* headers of a window; the caller holds the lock."""
    now = time.monotonic()
    used, oldest = 0, now + window
    if rate is not None:
        rate.purge(now, window)
        used, oldest = rate.total, rate.oldest_leaves(now, window)
    shown_limit = UNLIMITED_HEADER_VALUE if limit is None else limit
    return {
        "X-RateLimit-Resource-Limit": str(shown_limit),
        "X-RateLimit-Resource-Remaining": str(max(0, shown_limit - used)),
        "X-RateLimit-Resource-Until": http_date(oldest if until is None else until),
    }


class GatedStore:
    """`begin`/`end` and the request log of a store sharing a parallel limit per key."""

    _lock: threading.Lock
    _gate: ParallelGate
    _log: deque[dict[str, Any]]
    _key_field: str  # the log entries' name of the key: "campaign" or "business"
    _seq: int

    def _logged(self, entry: dict[str, Any]) -> str:
        """Numbers and logs one entry; returns its status for the counters (lock held)."""
        self._seq += 1
        entry["seq"] = self._seq
        self._log.append(entry)
        return "dropped" if entry["status"] is None else str(entry["status"])

    def requests(
        self, key: int | None = None, since: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Logged requests (oldest first) with seq > since, of one key if given."""
        with self._lock:
            return select(self._log, since, limit, **{self._key_field: key})

    def _slots(self, key: int) -> tuple[int, dict[str, Any]]:
        """The parallel limit and the counters of `key`; the caller holds the lock."""
        raise NotImplementedError

    def begin(self, key: int) -> bool:
        """Counts a request in flight; True when it is within the parallel limit (admitted)."""
        with self._lock:
            limit, stats = self._slots(key)
            return self._gate.begin(key, limit, stats)

    def end(self, key: int, admitted: bool) -> None:
        """Undoes `begin` once the answer is written or the connection dropped."""
        with self._lock:
            self._gate.end(key, admitted)


def _put_counters() -> dict[str, Any]:
    return {
        "requests": 0,
        "requests_by_status": defaultdict(int),
        "skus_accepted": 0,
        "skus_refused": 0,
        "stale_overwrites": 0,
        "skus_lost": 0,
        "lost_requests": 0,
    }


def _campaign_stats() -> dict[str, Any]:
    return {**_put_counters(), "max_parallel_seen": 0, "max_skus_accepted_in_window": 0}


class SandboxState(GatedStore):
    """Everything the sandbox remembers; every method is thread-safe."""

    _key_field = "campaign"

    def __init__(self, config: SandboxConfig) -> None:
        self._lock = threading.Lock()
        self._config = config
        # Fault injection needs reproducibility, not secrecy: a seeded Random is the point.
        self._rng = random.Random(config.seed)  # noqa: S311
        # In-flight counts survive a reset: the requests they count are still running.
        self._gate = ParallelGate()
        self._seq = 0
        self._clear()
        # Accounts, read methods and the v3 method keep their own state (they import this module).
        from sandbox.accounts import AccountsState
        from sandbox.v3 import V3Store

        self.accounts: AccountsState = AccountsState()
        self.v3: V3Store = V3Store(config.request_log_max)

    def _clear(self) -> None:
        # campaign -> sku -> (count, updatedAt, accepted_at); tuples keep a million SKUs small.
        self._stock: dict[int, dict[str, tuple[int, datetime, datetime]]] = defaultdict(dict)
        self._rate: dict[int, RollingWindow] = defaultdict(RollingWindow)
        self._accepted: dict[int, RollingWindow] = defaultdict(RollingWindow)
        self._log: deque[dict[str, Any]] = deque(maxlen=self._config.request_log_max)
        self._totals: dict[str, Any] = {
            **_put_counters(),
            "parallel_limited": 0,
            "rate_limited": 0,
            "injected": defaultdict(int),
        }
        self._campaigns: dict[int, dict[str, Any]] = defaultdict(_campaign_stats)
        # Sorted SKUs of a campaign for paged reads; dropped whenever a SKU comes or goes.
        self._sorted: dict[int, list[str]] = {}
        # Read windows: "v2" offers returned per campaign, "v3" requests per business.
        self._read_rate: dict[str, dict[int, RollingWindow]] = {
            "v2": defaultdict(RollingWindow),
            "v3": defaultdict(RollingWindow),
        }
        # campaign -> [PUTs still to lose, probability of losing one after those]
        self._lost: dict[int, list[float]] = {}
        self.reads = ReadBook(self._config.request_log_max)

    @property
    def config(self) -> SandboxConfig:
        """The settings in force (an immutable snapshot)."""
        return self._config

    def configure(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """Applies a partial update atomically; raises ConfigError and changes nothing if bad."""
        with self._lock:
            new = self._config.updated(changes)
            if "seed" in changes:
                self._rng = random.Random(new.seed)  # noqa: S311
            if new.request_log_max != self._config.request_log_max:
                self._log = deque(self._log, maxlen=new.request_log_max)
                self.reads.resize(new.request_log_max)
            self._config = new
            return new

    def reset(self) -> None:
        """Forgets stock, rate windows, the request log and the counters; settings stay."""
        with self._lock:
            self._clear()
        self.accounts.reset()
        self.v3.reset()

    def _slots(self, key: int) -> tuple[int, dict[str, Any]]:
        return self._config.max_parallel_requests, self._campaigns[key]

    def roll_faults(self) -> Faults:
        """Draws this request's injected latency and faults from the seeded generator."""
        with self._lock:
            c, rng = self._config, self._rng
            jitter = rng.uniform(0.0, c.latency_jitter_ms) if c.latency_jitter_ms else 0.0
            # Draw every roll every time, so one rate's change does not shift the others' sequence.
            rolls = [rng.random() for _ in range(4)]
        return Faults(
            latency_seconds=(c.latency_ms + jitter) / 1000.0,
            drop_before=rolls[0] < c.drop_before_rate,
            error_500=rolls[1] < c.error_500_rate,
            error_420=rolls[2] < c.error_420_rate,
            drop_after=rolls[3] < c.drop_after_rate,
        )

    def take_hold(self) -> float:
        """Seconds this stock PUT is to be held (0: none); counts one of `hold_requests` down."""
        with self._lock:
            config = self._config
            if config.hold_requests <= 0:
                return 0.0
            self._config = dataclasses.replace(config, hold_requests=config.hold_requests - 1)
            return config.hold_seconds

    def reserve(self, campaign: int, skus: int) -> Reservation:
        """Counts `skus` against the campaign's window if they fit; else says when they would."""
        with self._lock:
            limit = self._config.rate_limit_skus_per_minute
            return self._reserve_in(self._rate[campaign], skus, limit)

    def rate_headers(self, campaign: int | None, until: float | None = None) -> dict[str, str]:
        """X-RateLimit-Resource-* of the campaign's window; `until` overrides -Until."""
        with self._lock:
            rate = self._rate.get(campaign) if campaign is not None else None
            limit = self._config.rate_limit_skus_per_minute
            return self._headers_of(rate, limit, until)

    def reserve_read(self, method: str, key: int, amount: int) -> Reservation:
        """`reserve` on a read window: "v2" offers per campaign, "v3" requests per business."""
        with self._lock:
            window = self._read_rate[method][key]
            reservation = self._reserve_in(window, amount, read_limit(self._config, method))
            if reservation.ok:
                self.reads.peak(method, key, window.total)
            return reservation

    def read_headers(
        self, method: str, key: int | None, until: float | None = None
    ) -> dict[str, str]:
        """X-RateLimit-Resource-* of a read window (see `reserve_read`)."""
        with self._lock:
            window = self._read_rate[method].get(key) if key is not None else None
            return self._headers_of(window, read_limit(self._config, method), until)

    def _reserve_in(self, rate: RollingWindow, amount: int, limit: int | None) -> Reservation:
        return reserve_in(rate, amount, limit, self._config.rate_window_seconds)

    def _headers_of(
        self, rate: RollingWindow | None, limit: int | None, until: float | None
    ) -> dict[str, str]:
        return window_headers(rate, limit, self._config.rate_window_seconds, until)

    def apply(self, campaign: int, updates: Sequence[StockUpdate]) -> int:
        """Stores updates (last write wins; an older updatedAt counts as stale); returns a count."""
        now_utc = datetime.now(UTC)
        now = time.monotonic()
        applied = stale = 0
        if not updates:  # a refused request leaves no trace in the stock, not even its campaign
            return 0
        with self._lock:
            stock = self._stock[campaign]
            for update in updates:
                updated_at = update.updated_at or now_utc
                previous = stock.get(update.sku)
                if previous is None:
                    self._sorted.pop(campaign, None)
                elif updated_at < previous[1]:
                    stale += 1
                stock[update.sku] = (update.count, updated_at, now_utc)
                applied += 1
            stats = self._campaigns[campaign]
            stats["skus_accepted"] += applied
            stats["stale_overwrites"] += stale
            self._totals["skus_accepted"] += applied
            self._totals["stale_overwrites"] += stale
            if applied:
                accepted = self._accepted[campaign]
                accepted.purge(now, self._config.rate_window_seconds)
                accepted.add(now, applied)
                stats["max_skus_accepted_in_window"] = max(
                    stats["max_skus_accepted_in_window"], accepted.total
                )
        return applied

    def record(self, entry: dict[str, Any]) -> None:
        """Logs one Market request (bounded log) and counts it (exact counters)."""
        with self._lock:
            status = self._logged(entry)
            totals = self._totals
            totals["requests"] += 1
            totals["requests_by_status"][status] += 1
            totals["skus_refused"] += entry["skus_refused"]
            lost = entry.get("skus_lost", 0)
            totals["skus_lost"] += lost
            totals["lost_requests"] += bool(lost)
            totals["parallel_limited"] += entry["parallel_limited"]
            totals["rate_limited"] += entry["rate_limited"]
            if entry["injected"]:
                totals["injected"][entry["injected"]] += 1
            if entry["campaign"] is not None:
                stats = self._campaigns[entry["campaign"]]
                stats["requests"] += 1
                stats["requests_by_status"][status] += 1
                stats["skus_refused"] += entry["skus_refused"]
                stats["skus_lost"] += lost
                stats["lost_requests"] += bool(lost)

    def record_read(self, entry: dict[str, Any]) -> None:
        """Logs and counts one read request, numbered in the same sequence as the PUTs."""
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
        self.reads.record(entry)

    # --- hooks of the read methods and their controls (sandbox.stock_reads) ---------------

    def read_offers(self, campaign: int, skus: Sequence[str]) -> list[tuple[str, int, datetime]]:
        """(sku, count, updatedAt) of the asked SKUs the campaign holds, in the order asked."""
        with self._lock:
            stock = self._stock.get(campaign, {})
            found = ((sku, stock.get(sku)) for sku in skus)
            return [(sku, v[0], v[1]) for sku, v in found if v is not None]

    def read_page(
        self, campaign: int, after: str | None, limit: int
    ) -> tuple[list[tuple[str, int, datetime]], bool]:
        """Up to `limit` offers in SKU order after `after`, and whether more follow."""
        with self._lock:
            stock = self._stock.get(campaign, {})
            keys = self._sorted.get(campaign)
            if keys is None:
                keys = self._sorted[campaign] = sorted(stock)
            start = 0 if after is None else bisect.bisect_right(keys, after)
            page = keys[start : start + limit]
            offers = [(sku, stock[sku][0], stock[sku][1]) for sku in page]
            return offers, start + limit < len(keys)

    def set_skus(self, campaign: int, counts: Mapping[str, int], updated_at: datetime) -> int:
        """Writes counts behind the client's back (drift); returns how many SKUs were written."""
        now_utc = datetime.now(UTC)
        with self._lock:
            stock = self._stock[campaign]
            if not counts.keys() <= stock.keys():
                self._sorted.pop(campaign, None)
            for sku, count in counts.items():
                stock[sku] = (count, updated_at, now_utc)
            return len(counts)

    def drop_skus(self, campaign: int, skus: Sequence[str]) -> int:
        """Forgets SKUs of a campaign, as if the Market had lost them; returns how many it had."""
        with self._lock:
            stock = self._stock.get(campaign, {})
            dropped = sum(stock.pop(sku, None) is not None for sku in skus)
            if dropped:
                self._sorted.pop(campaign, None)
            return dropped

    def lose_updates(self, campaign: int, count: int, rate: float) -> None:
        """The next `count` applicable PUTs of the campaign, then a `rate` of them, are lost."""
        with self._lock:
            if count or rate:
                self._lost[campaign] = [float(count), rate]
            else:
                self._lost.pop(campaign, None)

    def take_lost_update(self, campaign: int) -> bool:
        """True when this PUT is to answer as usual without applying anything (a lost update)."""
        with self._lock:
            lost = self._lost.get(campaign)
            if lost is None:
                return False
            if lost[0] >= 1:
                lost[0] -= 1
                return True
            # The seeded generator, so a test that loses a fraction of PUTs can repeat its run.
            return lost[1] > 0 and self._rng.random() < lost[1]

    def lost_updates(self) -> dict[str, Any]:
        """The lost-update modes in force and the PUTs and SKUs lost so far, per campaign."""
        with self._lock:
            campaigns = set(self._lost) | {c for c, v in self._campaigns.items() if v["skus_lost"]}
            return {
                str(c): {
                    "count": int(self._lost.get(c, [0, 0.0])[0]),
                    "rate": self._lost.get(c, [0, 0.0])[1],
                    "lost_requests": self._campaigns[c]["lost_requests"],
                    "skus_lost": self._campaigns[c]["skus_lost"],
                }
                for c in sorted(campaigns)
            }

    def stock(self, campaign: int | None = None) -> dict[str, Any]:
        """Accepted stock as JSON: {campaign: {sku: entry}}, or {sku: entry} of one campaign."""
        with self._lock:
            if campaign is not None:
                return {sku: stock_json(v) for sku, v in self._stock.get(campaign, {}).items()}
            return {
                str(cid): {sku: stock_json(v) for sku, v in skus.items()}
                for cid, skus in sorted(self._stock.items())
            }

    def stats(self) -> dict[str, Any]:
        """Exact counters since the last reset, totals and per campaign, as JSON."""
        with self._lock:
            result = plain(self._totals)
            result["in_flight"] = self._gate.busy()
            result["requests_logged"] = len(self._log)
            result["campaigns"] = {str(k): plain(v) for k, v in sorted(self._campaigns.items())}
        # The v3 methods' one per-business counter (reads and updates) lives in the v3 store.
        result["business_in_flight"] = self.v3.stats()["in_flight"]
        result["reads"] = self.reads.stats()
        return result


def stock_json(value: tuple[int, datetime, datetime]) -> dict[str, Any]:
    """One held SKU as JSON: count, updatedAt and when the sandbox accepted it."""
    count, updated_at, accepted_at = value
    return {
        "count": count,
        "updatedAt": updated_at.isoformat(),
        "accepted_at": accepted_at.isoformat(),
    }
