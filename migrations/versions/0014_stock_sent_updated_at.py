"""stock.sent_updated_at: the updatedAt last acknowledged per key

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

Nullable with no default: adding it rewrites no row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stock", sa.Column("sent_updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("stock", "sent_updated_at")
