"""The sandbox's settings: defaults that behave like the Market, and checked partial updates."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from domain.market_rules import (
    PARALLEL_REQUESTS_MAX,
    RATE_LIMIT_SKUS_PER_MINUTE,
    normalize_sku,
)

# The read methods' own limits (sandbox.stock_reads): offers returned per campaign (v2
# getStocks) and requests per business (v3), each per rolling window.
READ_OFFERS_PER_MINUTE = 100_000
V3_READ_REQUESTS_PER_MINUTE = 500
# The Market's returns warehouse that FBS answers may carry beside the seller's.
RETURNS_WAREHOUSE_ID = 900_000_001


class ConfigError(ValueError):
    """A setting name or value the sandbox does not accept."""


@dataclass(frozen=True)
class SandboxConfig:
    """Every setting of the sandbox; an instance is immutable, updates make a new one."""

    # Credentials. Both empty: any non-empty Api-Key or Bearer token is accepted.
    # Either non-empty: only the listed ones are (a Bearer token then needs oauth_tokens).
    api_keys: frozenset[str] = frozenset()
    oauth_tokens: frozenset[str] = frozenset()
    # None: every campaign id exists; else the others answer 404.
    known_campaigns: frozenset[int] | None = None
    # campaign id -> status it answers (e.g. 401, 403, 404) until the entry is removed.
    forced_status: Mapping[int, int] = field(default_factory=dict)
    # False: a 400 refuses the whole request. True: valid SKUs are applied, bad ones refused.
    partial_400: bool = False
    # SKUs (as compared after trimming) that always get a 400 of their own.
    refuse_skus: frozenset[str] = frozenset()
    # SKUs per campaign per rolling window; None: unlimited.
    rate_limit_skus_per_minute: int | None = RATE_LIMIT_SKUS_PER_MINUTE
    # The Market's window is a minute; tests shorten it to watch SKUs leave it.
    rate_window_seconds: float = 60.0
    max_parallel_requests: int = PARALLEL_REQUESTS_MAX
    # Read limits per rolling window (rate_window_seconds); None: unlimited.
    read_offers_per_minute: int | None = READ_OFFERS_PER_MINUTE
    v3_read_requests_per_minute: int | None = V3_READ_REQUESTS_PER_MINUTE
    # campaign id -> its seller warehouse id in read answers; absent: campaign id * 10.
    warehouse_ids: Mapping[int, int] = field(default_factory=dict)
    # Campaigns whose read answers also hold the Market's returns warehouse (other counts).
    returns_warehouse_campaigns: frozenset[int] = frozenset()
    returns_warehouse_id: int = RETURNS_WAREHOUSE_ID
    # Fault injection, each a probability 0..1 rolled per request on a seedable generator.
    error_500_rate: float = 0.0
    error_420_rate: float = 0.0
    drop_before_rate: float = 0.0
    drop_after_rate: float = 0.0
    # Added latency: latency_ms always, plus a uniform random 0..latency_jitter_ms.
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    # How far in the future X-RateLimit-Resource-Until is on an injected or forced 420.
    injected_420_wait_seconds: float = 1.0
    # The next `hold_requests` admitted stock PUTs are held `hold_seconds` before they are applied,
    # with a `100 Continue` every second so a client's per-read timeouts never fire; one whose
    # client hangs up meanwhile is dropped unapplied, as a proxy that queued it would.
    hold_requests: int = 0
    hold_seconds: float = 30.0
    seed: int | None = None
    # Entries of the request log kept in memory; counters stay exact beyond it.
    request_log_max: int = 10_000

    def updated(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """A copy with `changes` (JSON-shaped values) applied; ConfigError names a bad one."""
        converted: dict[str, Any] = {}
        for name, raw in changes.items():
            converter = _CONVERTERS.get(name)
            if converter is None:
                raise ConfigError(f"unknown setting {name!r}; known: {sorted(_CONVERTERS)}")
            try:
                converted[name] = converter(raw)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"setting {name!r}: {exc}") from None
        return dataclasses.replace(self, **converted)

    def as_json(self) -> dict[str, Any]:
        """The settings as JSON values (sets as sorted lists, status map keys as strings)."""
        return {
            "api_keys": sorted(self.api_keys),
            "oauth_tokens": sorted(self.oauth_tokens),
            "known_campaigns": (
                None if self.known_campaigns is None else sorted(self.known_campaigns)
            ),
            "forced_status": {str(k): v for k, v in sorted(self.forced_status.items())},
            "partial_400": self.partial_400,
            "refuse_skus": sorted(self.refuse_skus),
            "rate_limit_skus_per_minute": self.rate_limit_skus_per_minute,
            "rate_window_seconds": self.rate_window_seconds,
            "max_parallel_requests": self.max_parallel_requests,
            "read_offers_per_minute": self.read_offers_per_minute,
            "v3_read_requests_per_minute": self.v3_read_requests_per_minute,
            "warehouse_ids": {str(k): v for k, v in sorted(self.warehouse_ids.items())},
            "returns_warehouse_campaigns": sorted(self.returns_warehouse_campaigns),
            "returns_warehouse_id": self.returns_warehouse_id,
            "error_500_rate": self.error_500_rate,
            "error_420_rate": self.error_420_rate,
            "drop_before_rate": self.drop_before_rate,
            "drop_after_rate": self.drop_after_rate,
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "injected_420_wait_seconds": self.injected_420_wait_seconds,
            "hold_requests": self.hold_requests,
            "hold_seconds": self.hold_seconds,
            "seed": self.seed,
            "request_log_max": self.request_log_max,
        }


def _int(raw: object, minimum: int) -> int:
    if type(raw) is not int:  # bool is no integer here either
        raise TypeError(f"an integer expected, got {raw!r}")
    if raw < minimum:
        raise ValueError(f"must be ≥ {minimum}, got {raw}")
    return raw


def _number(raw: object, minimum: float, maximum: float | None = None) -> float:
    if type(raw) not in (int, float):
        raise TypeError(f"a number expected, got {raw!r}")
    value = float(raw)  # type: ignore[arg-type]
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"must be within {minimum} … {maximum}, got {value}")
    return value


def _strings(raw: object) -> frozenset[str]:
    if not isinstance(raw, list | tuple | set | frozenset) or not all(
        isinstance(x, str) for x in raw
    ):
        raise TypeError(f"a list of strings expected, got {raw!r}")
    return frozenset(raw)


def _skus(raw: object) -> frozenset[str]:
    return frozenset(normalize_sku(sku) for sku in _strings(raw))


def _bool(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise TypeError(f"true or false expected, got {raw!r}")
    return raw


def _campaigns(raw: object) -> frozenset[int] | None:
    if raw is None:
        return None
    if not isinstance(raw, list | tuple | set | frozenset):
        raise TypeError(f"null or a list of campaign ids expected, got {raw!r}")
    return frozenset(_int(x, 1) for x in raw)


def forced_statuses(raw: object) -> dict[int, int]:
    """An object id -> forced status (400 … 599), keys as integers or digit strings."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"an object campaign id -> status expected, got {raw!r}")
    result: dict[int, int] = {}
    for key, status in raw.items():
        campaign = int(key) if isinstance(key, str) and key.isdigit() else _int(key, 1)
        code = _int(status, 400)
        if code > 599:
            raise ValueError(f"status must be 400 … 599, got {code}")
        result[campaign] = code
    return result


def _id_map(raw: object) -> dict[int, int]:
    if not isinstance(raw, Mapping):
        raise TypeError(f"an object campaign id -> warehouse id expected, got {raw!r}")
    return {
        int(key) if isinstance(key, str) and key.isdigit() else _int(key, 1): _int(value, 1)
        for key, value in raw.items()
    }


def _rate(raw: object) -> float:
    return _number(raw, 0.0, 1.0)


def _non_negative(raw: object) -> float:
    return _number(raw, 0.0)


def _positive(raw: object) -> float:
    value = _number(raw, 0.0)
    if value == 0:
        raise ValueError("must be > 0")
    return value


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "api_keys": _strings,
    "oauth_tokens": _strings,
    "known_campaigns": _campaigns,
    "forced_status": forced_statuses,
    "partial_400": _bool,
    "refuse_skus": _skus,
    "rate_limit_skus_per_minute": lambda raw: None if raw is None else _int(raw, 1),
    "rate_window_seconds": _positive,
    "max_parallel_requests": lambda raw: _int(raw, 1),
    "read_offers_per_minute": lambda raw: None if raw is None else _int(raw, 1),
    "v3_read_requests_per_minute": lambda raw: None if raw is None else _int(raw, 1),
    "warehouse_ids": _id_map,
    "returns_warehouse_campaigns": lambda raw: _campaigns(raw) or frozenset(),
    "returns_warehouse_id": lambda raw: _int(raw, 1),
    "error_500_rate": _rate,
    "error_420_rate": _rate,
    "drop_before_rate": _rate,
    "drop_after_rate": _rate,
    "latency_ms": _non_negative,
    "latency_jitter_ms": _non_negative,
    "injected_420_wait_seconds": _non_negative,
    "hold_requests": lambda raw: _int(raw, 0),
    "hold_seconds": _non_negative,
    "seed": lambda raw: None if raw is None else _int(raw, -(2**63)),
    "request_log_max": lambda raw: _int(raw, 1),
}
