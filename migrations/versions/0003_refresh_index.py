"""refresh index

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "stock_refresh",
        "stock",
        ["group_id", "acked_at"],
        unique=False,
        postgresql_where=sa.text("version = acked_version"),
    )


def downgrade() -> None:
    op.drop_index(
        "stock_refresh", table_name="stock", postgresql_where=sa.text("version = acked_version")
    )
