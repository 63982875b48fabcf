"""drain: campaigns, market requests, push claims

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign",
        sa.Column("campaign_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parked_reason", sa.Text(), nullable=True),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("probe_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("degraded_reason", sa.Text(), nullable=True),
        sa.Column("degraded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_push_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("campaign_id"),
    )
    op.create_table(
        "market_request",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("skus", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("correction", sa.Boolean(), server_default="false", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "market_request_campaign_started",
        "market_request",
        ["campaign_id", "started_at"],
        unique=False,
    )
    op.create_table(
        "push_claim",
        sa.Column("claim_id", sa.Text(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), nullable=False),
        sa.Column("skus", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("claim_id"),
    )
    op.create_index(
        "push_claim_campaign", "push_claim", ["campaign_id", "lease_until"], unique=False
    )
    op.create_table(
        "claimed_key",
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("claim_id", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("group_id", "sku", name="claimed_key_pkey"),
    )
    op.create_index("claimed_key_claim", "claimed_key", ["claim_id"], unique=False)


def downgrade() -> None:
    op.drop_index("claimed_key_claim", table_name="claimed_key")
    op.drop_table("claimed_key")
    op.drop_index("push_claim_campaign", table_name="push_claim")
    op.drop_table("push_claim")
    op.drop_index("market_request_campaign_started", table_name="market_request")
    op.drop_table("market_request")
    op.drop_table("campaign")
