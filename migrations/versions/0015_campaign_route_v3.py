"""campaign_route: the v3 business and partner warehouse of campaigns sent by the v3 method

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

With the v3 destination stored beside the groups, a campaign moved between v2 and v3 (or to
another v3 warehouse) is seen at worker start and its keys are sent again at their current value
by the new route (worker/routes.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("campaign_route", sa.Column("v3_business_id", sa.BigInteger(), nullable=True))
    op.add_column("campaign_route", sa.Column("v3_warehouse_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("campaign_route", "v3_warehouse_id")
    op.drop_column("campaign_route", "v3_business_id")
