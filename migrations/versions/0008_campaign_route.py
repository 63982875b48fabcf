"""campaign_route: the stored routing of every grouped campaign to its group's key

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

A key is (group, sku) and a group's key is its first campaign: with the routing stored, a changed
STOCKSYNC_WAREHOUSE_GROUPS is seen at worker start and the keys are carried over
(worker/routes.py) instead of starting new keys at 0. A campaign without a row routes to itself.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_route",
        sa.Column("campaign_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "routed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("campaign_id"),
    )


def downgrade() -> None:
    op.drop_table("campaign_route")
