"""The tables, as SQLAlchemy metadata: the source Alembic's `check` compares the revisions to."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)

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
    # Filled by the drain: what the Market acknowledged, and the lease of a claim in flight.
    Column("acked_version", BigInteger, nullable=False, server_default="0"),
    Column("acked_value", BigInteger),
    Column("acked_at", DateTime(timezone=True)),
    Column("claim_id", Text),
    Column("claimed_until", DateTime(timezone=True)),
    # A SKU the Market refused with a 400: parked at that version until the value changes.
    Column("parked_version", BigInteger),
    Column("parked_reason", Text),
    PrimaryKeyConstraint("group_id", "sku", name="stock_pkey"),
    Index(
        "stock_pending",
        "group_id",
        "changed_at",
        postgresql_where=text("version > acked_version"),
    ),
)

# Everything refused: single changes (position ≥ 0) and whole unreadable messages (position -1).
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
