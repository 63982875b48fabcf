"""Alembic environment: one migrator at a time (advisory lock), short lock timeout, our metadata."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from worker.database import database_url, make_engine
from worker.schema import metadata
from worker.settings import get_settings

# Any constant shared by all stocksync migrators: concurrent `stocksync migrate` calls queue here.
MIGRATION_LOCK_ID = 0x5370C5


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or database_url(get_settings())
    engine = make_engine(url, long_statements=True)
    with engine.connect() as connection:
        connection.execute(text("SET lock_timeout = '10s'"))
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=metadata)
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("stocksync migrations run online only: alembic upgrade head")
run_migrations_online()
