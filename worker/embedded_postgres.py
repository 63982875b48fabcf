"""The embedded PostgreSQL (pgserver) used when `STOCKSYNC_DATABASE_URL` is not set."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from worker.settings import SettingsError

MISSING = (
    "the embedded PostgreSQL needs the `embedded` extra: pip install 'stocksync[embedded]' "
    "(or set STOCKSYNC_DATABASE_URL)"
)


def load_pgserver() -> ModuleType:
    """pgserver, imported on first need: the production image installs no `embedded` extra.
    `SettingsError` (`MISSING`, one line naming the extra) when it is not installed."""
    try:
        import pgserver
    except ImportError:
        raise SettingsError(MISSING) from None
    return pgserver


def embedded_database_url(data_dir: Path, stop_on_exit: bool = False) -> str:
    """Starts (or reuses) the embedded server in `data_dir/pgdata` and returns its SQLAlchemy URL.

    The server is left running for the next process unless `stop_on_exit`, in which case it stops
    when the last process that asked for it with that flag exits.
    """
    pgserver = load_pgserver()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(data_dir / "pgdata", cleanup_mode="stop" if stop_on_exit else None)
    # pgserver puts the socket elsewhere when the data path is too long for a Unix socket.
    socket_dir = str(server.get_postmaster_info().socket_dir)
    return f"postgresql+psycopg://postgres@/postgres?host={quote(socket_dir)}"
