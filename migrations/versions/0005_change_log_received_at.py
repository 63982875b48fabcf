"""change log received_at index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("change_log_received_at", "change_log", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("change_log_received_at", table_name="change_log")
