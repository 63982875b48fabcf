"""monotonic counters for the metrics, and per-campaign tallies of pending and held keys

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-02

`counter` holds every Prometheus counter and histogram bucket, one row per (name, campaign,
label), incremented in the transactions that do the counted work; pruning never touches it.

`stock_tally` keeps each campaign's number of pending and held keys as insert-only delta rows,
written by statement-level triggers on `stock` from its transition tables: every statement that
changes `stock`, whoever runs it, adds one row per campaign whose figures it changed. Inserting
(never updating one row) means concurrent transactions never wait on each other here; the scrape
sums the rows and housekeeping folds them into one row per campaign.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A key is pending while version > acked_version, held while parked_version = version.
_FIGURES = """
    SELECT group_id, {sign}(version > acked_version)::int AS pending,
           {sign}COALESCE(parked_version = version, false)::int AS held
    FROM {table}
"""
_TALLY = """
    INSERT INTO stock_tally (group_id, pending, held)
    SELECT group_id, sum(pending), sum(held) FROM ({rows}) AS d
    GROUP BY group_id HAVING sum(pending) <> 0 OR sum(held) <> 0
"""
_FUNCTIONS = {
    "stock_tally_insert": _TALLY.format(rows=_FIGURES.format(sign="", table="new_rows")),
    "stock_tally_update": _TALLY.format(
        rows=_FIGURES.format(sign="", table="new_rows")
        + " UNION ALL "
        + _FIGURES.format(sign="-", table="old_rows")
    ),
    "stock_tally_delete": _TALLY.format(rows=_FIGURES.format(sign="-", table="old_rows")),
}
_TRIGGERS = {
    "stock_tally_insert": "AFTER INSERT ON stock REFERENCING NEW TABLE AS new_rows",
    "stock_tally_update": (
        "AFTER UPDATE ON stock REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    ),
    "stock_tally_delete": "AFTER DELETE ON stock REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.create_table(
        "counter",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("campaign_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("label", sa.Text(), server_default="", nullable=False),
        sa.Column("value", sa.Float(precision=53), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("name", "campaign_id", "label", name="counter_pkey"),
    )
    op.create_table(
        "stock_tally",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("pending", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="stock_tally_pkey"),
    )
    # No write to `stock` may slip between the first tally and the triggers.
    op.execute("LOCK TABLE stock IN SHARE ROW EXCLUSIVE MODE")
    op.execute(_TALLY.format(rows=_FIGURES.format(sign="", table="stock")))
    for name, body in _FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n{body};\nRETURN NULL;\nEND\n$$"
        )
        op.execute(
            f"CREATE TRIGGER {name} {_TRIGGERS[name]} FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )
    op.execute("""
        CREATE FUNCTION stock_tally_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM stock_tally;
            RETURN NULL;
        END
        $$
    """)
    op.execute(
        "CREATE TRIGGER stock_tally_truncate AFTER TRUNCATE ON stock "
        "FOR EACH STATEMENT EXECUTE FUNCTION stock_tally_truncate()"
    )


def downgrade() -> None:
    for name in [*_FUNCTIONS, "stock_tally_truncate"]:
        op.execute(f"DROP TRIGGER {name} ON stock")
        op.execute(f"DROP FUNCTION {name}()")
    op.drop_table("stock_tally")
    op.drop_table("counter")
