"""Campaign health, the one owner of the `campaign` table: 420 blocks, parking (401/403/404) with
its probes, degrading after retries, and the campaign working again after a 200.

Every planner and limiter of a campaign takes turns on its row (`lock`), so one decides at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, text

# Only a campaign without a row inserts one. `ON CONFLICT` alone would wait for any transaction
# that changed an existing row (its new version is not yet committed), such as a planner frozen
# inside its claim: the NOT EXISTS reads the committed row and never waits.
_ENSURE = text("""
    INSERT INTO campaign (campaign_id) SELECT :c
    WHERE NOT EXISTS (SELECT 1 FROM campaign WHERE campaign_id = :c)
    ON CONFLICT (campaign_id) DO NOTHING
""")

_LOCK = text("""
    SELECT blocked_until, parked_reason, verify_blocked_until, clock_timestamp() AS now
    FROM campaign
    WHERE campaign_id = :c FOR UPDATE
""")

# A planner does not wait for a busy campaign (another planner, or a worker frozen or cut off
# inside its transaction): it skips it, and the next drain tries again.
_TRY_LOCK = text("""
    SELECT blocked_until, parked_reason, verify_blocked_until, clock_timestamp() AS now
    FROM campaign
    WHERE campaign_id = :c FOR UPDATE SKIP LOCKED
""")

_KNOWN = text("SELECT campaign_id FROM campaign ORDER BY campaign_id")

_BLOCK = text("""
    UPDATE campaign SET blocked_until = GREATEST(COALESCE(blocked_until, :until), :until)
    WHERE campaign_id = :c
""")

# Seconds until a 420's block of the route ends, on the database's clock (0: not blocked).
_BLOCKED_SECONDS = text("""
    SELECT GREATEST(0, EXTRACT(EPOCH FROM blocked_until - clock_timestamp()))
    FROM campaign WHERE campaign_id = :c
""")

_BLOCK_VERIFY = text("""
    UPDATE campaign
    SET verify_blocked_until = GREATEST(COALESCE(verify_blocked_until, :until), :until)
    WHERE campaign_id = :c
""")

_WORKS_FIELDS = """
    last_push_at = clock_timestamp(), degraded_reason = NULL,
    degraded_at = NULL, parked_reason = NULL, parked_at = NULL, probe_at = NULL
"""
_WORKS = text(f"UPDATE campaign SET {_WORKS_FIELDS} WHERE campaign_id = :c")  # noqa: S608
# The common 200 only moves `last_push_at`: it need not wait while a planner holds the row.
_TRY_WORKS = text(f"""
    UPDATE campaign SET {_WORKS_FIELDS}
    WHERE campaign_id = (SELECT campaign_id FROM campaign WHERE campaign_id = :c
                         FOR UPDATE SKIP LOCKED)
""")  # noqa: S608 - a constant fragment; every value is a bound parameter
_UNWELL = text("""
    SELECT 1 FROM campaign
    WHERE campaign_id = :c AND (parked_reason IS NOT NULL OR degraded_reason IS NOT NULL)
""")

_PARK = text("""
    UPDATE campaign SET parked_reason = :reason,
        parked_at = COALESCE(parked_at, clock_timestamp()),
        probe_at = clock_timestamp() + make_interval(secs => :probe)
    WHERE campaign_id = :c
""")

_DEGRADE = text("""
    UPDATE campaign SET degraded_reason = :reason,
        degraded_at = COALESCE(degraded_at, clock_timestamp())
    WHERE campaign_id = :c
""")

_PROBE_DUE = text("""
    UPDATE campaign SET probe_at = clock_timestamp() + make_interval(secs => :probe)
    WHERE campaign_id = :c AND parked_reason IS NOT NULL AND probe_at <= clock_timestamp()
    RETURNING campaign_id
""")


@dataclass(frozen=True, slots=True)
class CampaignState:
    """A campaign's row as locked, with the database's clock."""

    blocked_until: datetime | None
    parked_reason: str | None
    now: datetime
    # After a 420 on a read: no read before it (pushes are not held by it).
    verify_blocked_until: datetime | None = None

    @property
    def blocked(self) -> bool:
        """True while a 420's `-Until` has not passed."""
        return self.blocked_until is not None and self.blocked_until > self.now


def lock(conn: Connection, campaign_id: int, wait: bool = True) -> CampaignState | None:
    """Creates the campaign's row when new and locks it until `conn`'s transaction ends; with
    `wait=False`, None (nothing locked) when another transaction holds it."""
    conn.execute(_ENSURE, {"c": campaign_id})
    row = conn.execute(_LOCK if wait else _TRY_LOCK, {"c": campaign_id}).first()
    if row is None:
        if wait:
            raise LookupError(f"campaign {campaign_id} has no row")
        return None
    return CampaignState(row.blocked_until, row.parked_reason, row.now, row.verify_blocked_until)


def known_campaigns(conn: Connection) -> list[int]:
    """Every campaign sent to before."""
    return [row[0] for row in conn.execute(_KNOWN)]


def block_until(conn: Connection, campaign_id: int, until: datetime) -> None:
    """A 420: no request to the campaign before `until` (a later block is kept)."""
    conn.execute(_BLOCK, {"c": campaign_id, "until": until})


def block_reads_until(conn: Connection, campaign_id: int, until: datetime) -> None:
    """A 420 on a read: no read of the campaign before `until`; sending goes on."""
    conn.execute(_BLOCK_VERIFY, {"c": campaign_id, "until": until})


def works_again(conn: Connection, campaign_id: int) -> None:
    """A 200: the campaign is neither parked nor degraded, and was pushed to now. While its row
    is busy only a parked or degraded campaign waits for it (`last_push_at` can be late)."""
    if conn.execute(_TRY_WORKS, {"c": campaign_id}).rowcount:
        return
    if conn.execute(_UNWELL, {"c": campaign_id}).first() is not None:
        conn.execute(_WORKS, {"c": campaign_id})


def probe_due(conn: Connection, campaign_id: int, probe_interval: float) -> bool:
    """True (and the next probe scheduled) when a parked campaign's probe is due."""
    return conn.execute(_PROBE_DUE, {"c": campaign_id, "probe": probe_interval}).first() is not None


class CampaignHealth:
    """Parking and degrading a campaign, each in a transaction of its own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def park(self, campaign_id: int, reason: str, probe_interval: float) -> None:
        """401/403/404: nothing but a probe every `probe_interval` seconds goes to the campaign."""
        with self.engine.begin() as conn:
            conn.execute(_PARK, {"c": campaign_id, "reason": reason, "probe": probe_interval})

    def blocked_seconds(self, campaign_id: int) -> float:
        """How long sending to the route stays blocked by a 420 from now (0: not blocked)."""
        with self.engine.connect() as conn:
            seconds = conn.execute(_BLOCKED_SECONDS, {"c": campaign_id}).scalar()
            return 0.0 if seconds is None else float(seconds)

    def degrade(self, campaign_id: int, reason: str) -> None:
        """Retries ran out: the campaign is marked degraded until a 200."""
        with self.engine.begin() as conn:
            conn.execute(_DEGRADE, {"c": campaign_id, "reason": reason})
