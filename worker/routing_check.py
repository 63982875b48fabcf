"""The routing check: the settings' warehouse groups and v3 campaigns against the Market's, at start
and hourly; the result is stored (table `routing_check`) and logged. It reports, it never changes
routing.

Cost per check: 1 `GET /v2/campaigns` per 100 campaigns (limit 1,000 an hour) and, per business,
1 `POST /v2/businesses/{id}/warehouses` per 25 campaigns and 30 warehouses (limit 100 an hour).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.dialects.postgresql import insert

from domain.discovery import Discovery, V3Route, discover, v3_json
from worker.market_client import MarketClient, MarketReader, MarketReadError
from worker.schema import routing_check
from worker.settings import Settings

log = logging.getLogger(__name__)

CHECK_INTERVAL_SECONDS = 3600.0
# pg advisory lock: one check at a time across every process (two would only spend read calls).
_LOCK_KEY = 0x5707_C4EC


@dataclass(frozen=True, slots=True)
class RoutingCheck:
    """One check's result: readable or not, and the differences it found."""

    checked_at: datetime
    readable: bool
    differences: list[str]
    error: str | None
    calls: int
    settings_fingerprint: str

    @property
    def matches(self) -> bool | None:
        """True when the settings match the Market, False when not, None when it was unreadable."""
        return None if not self.readable else not self.differences

    def as_json(self) -> dict[str, object]:
        """`stocksync status --json`'s `routing` object."""
        return {
            "checked_at": self.checked_at.isoformat(),
            "matches": self.matches,
            "differences": self.differences,
            "error": self.error,
            "market_calls": self.calls,
        }


def settings_fingerprint(settings: Settings) -> str:
    """The routing settings as one string: a check made under other settings is stale."""
    v3 = {c: V3Route(t.business_id, t.warehouse_id) for c, t in settings.v3_campaigns.items()}
    return json.dumps(
        {
            "groups": settings.warehouse_groups,
            "v3": v3_json(v3),
            "market": settings.market_base_url,
        },
        sort_keys=True,
    )


def reader_for(settings: Settings) -> MarketReader:
    """A reader on the configured Market with the configured credential."""
    return MarketReader(
        MarketClient(
            settings.market_base_url,
            settings.market_api_key,
            settings.market_oauth_token,
            settings.market_timeout_seconds,
        )
    )


def read_discovery(settings: Settings, reader: MarketReader) -> Discovery:
    """Reads the cabinet and compares it with `settings`; MarketReadError when unreadable."""
    campaigns, warehouses = reader.read_cabinet()
    today_v3 = {c: V3Route(t.business_id, t.warehouse_id) for c, t in settings.v3_campaigns.items()}
    return discover(campaigns, warehouses, settings.warehouse_groups, today_v3)


def _row(conn: Connection) -> RoutingCheck | None:
    row = conn.execute(select(routing_check)).one_or_none()
    if row is None:
        return None
    return RoutingCheck(
        checked_at=row.checked_at,
        readable=row.readable,
        differences=list(row.differences),
        error=row.error,
        calls=row.calls,
        settings_fingerprint=row.settings_fingerprint,
    )


def last_check(engine: Engine) -> RoutingCheck | None:
    """The stored result of the last check, or None before the first."""
    with engine.connect() as conn:
        return _row(conn)


def _fresh(previous: RoutingCheck | None, fingerprint: str, now: datetime) -> bool:
    """A readable check under the same settings within the interval needs no repeat at start."""
    return (
        previous is not None
        and previous.readable
        and previous.settings_fingerprint == fingerprint
        and (now - previous.checked_at).total_seconds() < CHECK_INTERVAL_SECONDS
    )


def _database_now(conn: Connection) -> datetime:
    now: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return now


def check_routing(
    engine: Engine, settings: Settings, reader: MarketReader, *, at_start: bool = False
) -> RoutingCheck | None:
    """Checks the settings against the Market, stores and logs the result; None when skipped
    (another process is checking, or `at_start` with a fresh result under the same settings)."""
    fingerprint = settings_fingerprint(settings)
    with engine.begin() as conn:
        # Held through the reads: a second process skips instead of spending read calls too.
        if not conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK_KEY}):
            return None
        # Dated and judged by the database's clock: every host reads the same one.
        if at_start and _fresh(_row(conn), fingerprint, _database_now(conn)):
            return None
        try:
            differences, error = read_discovery(settings, reader).differences, None
        except MarketReadError as exc:
            differences, error = [], str(exc)
        result = RoutingCheck(
            checked_at=_database_now(conn),
            readable=error is None,
            differences=differences,
            error=error,
            calls=sum(reader.calls.values()),
            settings_fingerprint=fingerprint,
        )
        values = {
            "checked_at": result.checked_at,
            "readable": result.readable,
            "differences": result.differences,
            "error": result.error,
            "calls": result.calls,
            "settings_fingerprint": fingerprint,
        }
        conn.execute(
            insert(routing_check)
            .values(id=1, **values)
            .on_conflict_do_update(index_elements=["id"], set_=values)
        )
    _log(result)
    return result


def _log(result: RoutingCheck) -> None:
    if result.error is not None:
        log.warning("routing check: cannot read the Market: %s", result.error)
    elif result.differences:
        log.warning(
            "routing check: the settings differ from the Market (%d): %s; run `stocksync "
            "discover` and update the settings (routing is not changed automatically)",
            len(result.differences),
            "; ".join(result.differences),
        )
    else:
        log.info("routing check: the settings match the Market (%d calls)", result.calls)
