"""routing_check: the last check of the settings' routing against the Market (one row)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

The service checks at start and hourly that STOCKSYNC_WAREHOUSE_GROUPS and STOCKSYNC_V3_CAMPAIGNS
still match the Market's campaigns and groups (worker/routing_check.py); the result is stored so
`stocksync status` and the metrics of any process can show a mismatch.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_check",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("readable", sa.Boolean(), nullable=False),
        sa.Column("differences", postgresql.JSONB(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("settings_fingerprint", sa.Text(), nullable=False),
        sa.CheckConstraint("id = 1", name="routing_check_one_row"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("routing_check")
