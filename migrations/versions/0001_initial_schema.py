"""change log, outbox and rejected changes

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "change_log",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("task_id", sa.Text(), nullable=True),
        sa.CheckConstraint("(delta IS NULL) <> (count IS NULL)", name="change_log_delta_xor_count"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("idempotency_key", name="change_log_idempotency_key"),
    )
    op.create_index(
        "change_log_key_deltas",
        "change_log",
        ["group_id", "sku", "occurred_at"],
        unique=False,
        postgresql_include=["delta"],
        postgresql_where=sa.text("delta IS NOT NULL"),
    )
    op.create_table(
        "rejected",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("task_id", "position", name="rejected_task_position"),
    )
    op.create_index("rejected_received_at", "rejected", ["received_at"], unique=False)
    op.create_table(
        "stock",
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("abs_count", sa.BigInteger(), nullable=True),
        sa.Column("abs_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("abs_seq", sa.BigInteger(), nullable=True),
        sa.Column("delta_sum", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "value",
            sa.BigInteger(),
            sa.Computed("COALESCE(abs_count, 0) + delta_sum", persisted=True),
            nullable=True,
        ),
        sa.Column("last_occurred_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("acked_version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("acked_value", sa.BigInteger(), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parked_version", sa.BigInteger(), nullable=True),
        sa.Column("parked_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("group_id", "sku", name="stock_pkey"),
    )
    op.create_index(
        "stock_pending",
        "stock",
        ["group_id", "changed_at"],
        unique=False,
        postgresql_where=sa.text("version > acked_version"),
    )


def downgrade() -> None:
    op.drop_index(
        "stock_pending", table_name="stock", postgresql_where=sa.text("version > acked_version")
    )
    op.drop_table("stock")
    op.drop_index("rejected_received_at", table_name="rejected")
    op.drop_table("rejected")
    op.drop_index(
        "change_log_key_deltas",
        table_name="change_log",
        postgresql_include=["delta"],
        postgresql_where=sa.text("delta IS NOT NULL"),
    )
    op.drop_table("change_log")
