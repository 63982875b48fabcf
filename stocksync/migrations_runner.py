"""The CLI's database edge: which URL a command uses, and Alembic's upgrade to head."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from worker.settings import Settings, get_settings

MIGRATIONS_DIR = Path(migrations.__file__).resolve().parent
ALEMBIC_INI = MIGRATIONS_DIR.parent / "alembic.ini"


def resolve_database_url(settings: Settings) -> str:
    """The configured URL, else the embedded server's, stopped at exit unless another holds it.

    The embedded server's URL goes into this process's environment as STOCKSYNC_DATABASE_URL:
    the Celery app (its broker), forked pools and child processes all read it from there, so none
    of them looks for a server of its own (`worker.database.database_url` refuses to)."""
    if settings.database_url:
        return settings.database_url
    # Imported here: pgserver (the `embedded` extra) is needed only when nothing is configured.
    from worker.embedded_postgres import embedded_database_url

    url = embedded_database_url(settings.data_dir, stop_on_exit=True)
    os.environ["STOCKSYNC_DATABASE_URL"] = url
    get_settings.cache_clear()
    return url


def alembic_config(url: str) -> Config:
    """The repository's alembic.ini (or its settings, when installed without it) aimed at `url`."""
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates %: a percent-encoded URL must be escaped to survive it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> str:
    """Applies every pending migration to the database at `url`; returns the head revision."""
    alembic_log = logging.getLogger("alembic")
    # Alembic ships a NullHandler only: say which revisions run unless logging is set up already.
    if all(isinstance(h, logging.NullHandler) for h in alembic_log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        alembic_log.addHandler(handler)
        alembic_log.setLevel(logging.INFO)
    config = alembic_config(url)
    command.upgrade(config, "head")
    return str(ScriptDirectory.from_config(config).get_current_head())
