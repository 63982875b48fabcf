"""verify sweep: stock.verified_at, the drift table, read requests and sweep figures per campaign

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02

`verified_at` is '-infinity' for a key never read back, so the partial index (acknowledged keys,
oldest check first) has no NULLs to order. `market_request.kind` tells reads from pushes in the one
rate limiter's ledger.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "stock",
        sa.Column("verified_at", _TS, nullable=False, server_default=sa.text("'-infinity'")),
    )
    op.create_index(
        "stock_verify",
        "stock",
        ["group_id", "verified_at"],
        unique=False,
        postgresql_where=sa.text("version = acked_version"),
    )
    op.add_column(
        "market_request",
        sa.Column("kind", sa.Text(), nullable=False, server_default=sa.text("'push'")),
    )
    for name in ("verify_blocked_until", "warehouse_checked_at", "round_started_at"):
        op.add_column("campaign", sa.Column(name, _TS))
    op.add_column("campaign", sa.Column("warehouse_id", sa.BigInteger()))
    op.add_column("campaign", sa.Column("round_keys", sa.BigInteger()))
    op.add_column("campaign", sa.Column("last_full_sweep_at", _TS))
    for name in (
        "round_checked",
        "keys_checked_total",
        "drift_found_total",
        "drift_repaired_total",
    ):
        op.add_column(
            "campaign", sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
        )
    op.create_table(
        "drift",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("found_at", _TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("market_count", sa.BigInteger()),
        sa.Column("market_updated_at", _TS),
        sa.Column("our_value", sa.BigInteger()),
        sa.Column("repaired", sa.Boolean(), nullable=False),
        sa.Column("resolved_at", _TS),
        sa.CheckConstraint("kind IN ('missing', 'count')", name="drift_kind"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("drift_key_found", "drift", ["group_id", "sku", "found_at"], unique=False)
    op.create_index("drift_found_at", "drift", ["found_at"], unique=False)


def downgrade() -> None:
    op.drop_index("drift_found_at", table_name="drift")
    op.drop_index("drift_key_found", table_name="drift")
    op.drop_table("drift")
    for name in (
        "drift_repaired_total",
        "drift_found_total",
        "keys_checked_total",
        "round_checked",
        "last_full_sweep_at",
        "round_keys",
        "warehouse_id",
        "round_started_at",
        "warehouse_checked_at",
        "verify_blocked_until",
    ):
        op.drop_column("campaign", name)
    op.drop_column("market_request", "kind")
    op.drop_index(
        "stock_verify", table_name="stock", postgresql_where=sa.text("version = acked_version")
    )
    op.drop_column("stock", "verified_at")
