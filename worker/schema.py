"""The tables, as SQLAlchemy metadata: the source Alembic's `check` compares the revisions to."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# Append-only: every accepted change, once. `idempotency_key` is "e:<event_id>" or
# "t:<task id>:<index in changes>", so a duplicate or a redelivered message inserts nothing.
change_log = Table(
    "change_log",
    metadata,
    Column("seq", BigInteger, Identity(always=True), primary_key=True),
    Column("idempotency_key", Text, nullable=False),
    Column("group_id", BigInteger, nullable=False),
    Column("campaign_id", BigInteger, nullable=False),
    Column("sku", Text, nullable=False),
    Column("delta", BigInteger),
    Column("count", BigInteger),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("task_id", Text),
    UniqueConstraint("idempotency_key", name="change_log_idempotency_key"),
    CheckConstraint("(delta IS NULL) <> (count IS NULL)", name="change_log_delta_xor_count"),
    Index(
        "change_log_key_deltas",
        "group_id",
        "sku",
        "occurred_at",
        postgresql_include=["delta"],
        postgresql_where=text("delta IS NOT NULL"),
    ),
    Index("change_log_received_at", "received_at"),
)

# The outbox: the current state of every (group, sku) key. `version` grows with every change of
# the value; the key is pending while `version > acked_version`.
stock = Table(
    "stock",
    metadata,
    Column("group_id", BigInteger, nullable=False),
    Column("sku", Text, nullable=False),
    Column("abs_count", BigInteger),
    Column("abs_at", DateTime(timezone=True)),
    Column("abs_seq", BigInteger),
    Column("delta_sum", BigInteger, nullable=False, server_default="0"),
    Column("value", BigInteger, Computed("COALESCE(abs_count, 0) + delta_sum", persisted=True)),
    Column("last_occurred_at", DateTime(timezone=True)),
    Column("version", BigInteger, nullable=False, server_default="0"),
    Column("changed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Filled by the drain: what the Market acknowledged (claims in flight live in claimed_key).
    Column("acked_version", BigInteger, nullable=False, server_default="0"),
    Column("acked_value", BigInteger),
    Column("acked_at", DateTime(timezone=True)),
    # A SKU the Market rejected with a 400: held at that version until the value changes.
    Column("parked_version", BigInteger),
    Column("parked_reason", Text),
    # The updatedAt of the last acknowledged send: the next one never goes back from it.
    Column("sent_updated_at", DateTime(timezone=True)),
    # When the sweep last read the key back from the Market ('-infinity': never).
    Column(
        "verified_at", DateTime(timezone=True), nullable=False, server_default=text("'-infinity'")
    ),
    PrimaryKeyConstraint("group_id", "sku", name="stock_pkey"),
    Index(
        "stock_pending",
        "group_id",
        "changed_at",
        postgresql_where=text("version > acked_version"),
    ),
    Index(
        "stock_refresh",
        "group_id",
        "acked_at",
        postgresql_where=text("version = acked_version"),
    ),
    # The sweep's next keys: acknowledged ones, oldest check first (worker/verify.py).
    Index(
        "stock_verify",
        "group_id",
        "verified_at",
        postgresql_where=text("version = acked_version"),
    ),
)

# Everything rejected: single changes (position ≥ 0) and whole unreadable messages (position -1).
rejected = Table(
    "rejected",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("task_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("campaign_id", BigInteger),
    Column("raw", Text, nullable=False),
    Column("reason", Text, nullable=False),
    UniqueConstraint("task_id", "position", name="rejected_task_position"),
    Index("rejected_received_at", "received_at"),
)

# Per target campaign: why it is not being sent to, and since when.
campaign = Table(
    "campaign",
    metadata,
    Column("campaign_id", BigInteger, primary_key=True, autoincrement=False),
    # After a 420: nothing is sent before the Market's X-RateLimit-Resource-Until.
    Column("blocked_until", DateTime(timezone=True)),
    # After a 401/403/404: parked with the Market's reason; probed at `probe_at` to resume.
    Column("parked_reason", Text),
    Column("parked_at", DateTime(timezone=True)),
    Column("probe_at", DateTime(timezone=True)),
    # After retries ran out on 5xx or network errors: still sent to, but shown as degraded.
    Column("degraded_reason", Text),
    Column("degraded_at", DateTime(timezone=True)),
    Column("last_push_at", DateTime(timezone=True)),
    # When a planner last took the campaign's turn: a drain pass serves the longest-waiting first.
    Column("drained_at", DateTime(timezone=True)),
    # The verify sweep (worker/verify.py): a read's 420 blocks only the sweep; the campaign's own
    # warehouse in read answers once learned; the current round; monotonic counters.
    Column("verify_blocked_until", DateTime(timezone=True)),
    Column("warehouse_checked_at", DateTime(timezone=True)),
    Column("round_started_at", DateTime(timezone=True)),
    Column("warehouse_id", BigInteger),
    Column("round_keys", BigInteger),
    Column("last_full_sweep_at", DateTime(timezone=True)),
    Column("round_checked", BigInteger, nullable=False, server_default="0"),
    Column("keys_checked_total", BigInteger, nullable=False, server_default="0"),
    Column("drift_found_total", BigInteger, nullable=False, server_default="0"),
    Column("drift_repaired_total", BigInteger, nullable=False, server_default="0"),
)

# Every request to the Market: the rate limiter's ledger (SKUs in the rolling window, requests in
# flight) and the status command's history. Pruned after a few hours.
market_request = Table(
    "market_request",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("campaign_id", BigInteger, nullable=False),
    Column("skus", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    # HTTP status; 0 for a timeout or broken connection; NULL while in flight or for a correction.
    Column("status", Integer),
    Column("correction", Boolean, nullable=False, server_default="false"),
    # "push" (updateStocks) or "read" (getStocks): each has its own window, both share the slots.
    Column("kind", Text, nullable=False, server_default=text("'push'")),
    Index("market_request_campaign_started", "campaign_id", "started_at"),
)

# A batch of keys claimed by the drain for one push task; the claim lives until `lease_until`,
# after which another drain may take its keys again (a worker died).
push_claim = Table(
    "push_claim",
    metadata,
    Column("claim_id", Text, primary_key=True),
    Column("campaign_id", BigInteger, nullable=False),
    Column("skus", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("lease_until", DateTime(timezone=True), nullable=False),
    Index("push_claim_campaign", "campaign_id", "lease_until"),
)

# The keys of each claim. Its primary key lets one claim hold a key at a time; the claim's lease
# (push_claim) says whether it still does. The outbox rows are not written to claim them: narrow
# inserts here cost far less than updating the wide, well-indexed `stock` rows.
claimed_key = Table(
    "claimed_key",
    metadata,
    Column("group_id", BigInteger, nullable=False),
    Column("sku", Text, nullable=False),
    Column("claim_id", Text, nullable=False),
    PrimaryKeyConstraint("group_id", "sku", name="claimed_key_pkey"),
    Index("claimed_key_claim", "claim_id"),
)

# Messages the broker delivered again (a worker died while handling them): how often. A message
# that keeps killing its worker is set aside as unreadable instead of looping forever.
redelivery = Table(
    "redelivery",
    metadata,
    Column("task_id", Text, primary_key=True),
    Column("deliveries", Integer, nullable=False),
    Column("last_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # When the service first received the message: the default occurred_at of its changes.
    Column(
        "first_seen_at",
        DateTime(timezone=True),
        nullable=False,
        server_default=text("clock_timestamp()"),
    ),
)

# The routing the keys were last stored under: each grouped campaign to its group's key (the
# group's first, sending campaign). A campaign without a row routes to itself. Written at worker
# start (worker/routes.py), which carries the keys over when the configured groups changed.
# A campaign sent by v3 has a row routing to itself with its business and partner warehouse.
campaign_route = Table(
    "campaign_route",
    metadata,
    Column("campaign_id", BigInteger, primary_key=True, autoincrement=False),
    Column("group_id", BigInteger, nullable=False),
    Column("routed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("v3_business_id", BigInteger),
    Column("v3_warehouse_id", BigInteger),
)

# The last routing check (worker/routing_check.py): one row, replaced by each check, read by
# `stocksync status` and the metrics of any process.
routing_check = Table(
    "routing_check",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("checked_at", DateTime(timezone=True), nullable=False),
    Column("readable", Boolean, nullable=False),
    Column("differences", JSONB, nullable=False),
    Column("error", Text, nullable=True),
    Column("calls", Integer, nullable=False),
    Column("settings_fingerprint", Text, nullable=False),
    CheckConstraint("id = 1", name="routing_check_one_row"),
)

# The metrics' counters and histogram buckets: one row per (name, campaign, label), only ever
# incremented, in the transaction that does the counted work (worker/counters.py). Campaign 0 and
# label '' stand for "none". Pruning never touches it, so no counter falls.
counter = Table(
    "counter",
    metadata,
    Column("name", Text, nullable=False),
    Column("campaign_id", BigInteger, nullable=False, server_default="0"),
    Column("label", Text, nullable=False, server_default=""),
    Column("value", Float(precision=53), nullable=False, server_default="0"),
    PrimaryKeyConstraint("name", "campaign_id", "label", name="counter_pkey"),
)

# Each campaign's pending and held keys, as delta rows: the triggers of revision 0011 add one row
# per statement on `stock` and campaign whose figures changed (insert-only: no two transactions
# wait on one row); housekeeping folds them into one row per campaign; the scrape sums them.
stock_tally = Table(
    "stock_tally",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("group_id", BigInteger, nullable=False),
    Column("pending", BigInteger, nullable=False),
    Column("held", BigInteger, nullable=False),
)

# Every key the sweep found different at the Market: missing there, or another count. A key with
# more than 3 unresolved drifts in 24 hours "keeps drifting": recorded, not repaired (`repaired`
# false) until `stocksync resync` resolves it.
drift = Table(
    "drift",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("group_id", BigInteger, nullable=False),
    Column("sku", Text, nullable=False),
    Column("found_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("kind", Text, nullable=False),
    Column("market_count", BigInteger),
    Column("market_updated_at", DateTime(timezone=True)),
    Column("our_value", BigInteger),
    Column("repaired", Boolean, nullable=False),
    Column("resolved_at", DateTime(timezone=True)),
    CheckConstraint("kind IN ('missing', 'count')", name="drift_kind"),
    Index("drift_key_found", "group_id", "sku", "found_at"),
    Index("drift_found_at", "found_at"),
)
