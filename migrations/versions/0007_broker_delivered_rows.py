"""drop the delivered rows kombu's own SQLAlchemy consumer left in kombu_message

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

Data only: kombu's consumer marks a fetched message invisible and never deletes it, acknowledged
or not, so an older stocksync left every message it ever took there. They cannot be told apart
(acknowledged, or lost with a killed worker), and delivering them again could replay an old count
whose change_log rows were pruned, so they go. worker/embedded_broker.py deletes a message when it
is acknowledged and marks its own claims (version -1): those, and visible rows, are kept.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The table is kombu's, created by the first producer or worker: it may not exist yet.
    op.execute(
        """
        DO $$
        BEGIN
            IF to_regclass('kombu_message') IS NOT NULL THEN
                DELETE FROM kombu_message WHERE visible = false AND version <> -1;
            END IF;
        END
        $$
        """
    )


def downgrade() -> None:
    """Nothing to restore: the rows were delivered ones."""
