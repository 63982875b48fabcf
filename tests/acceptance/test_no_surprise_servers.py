"""`celery -A worker …` with nothing configured starts no PostgreSQL of its own (issue 11, item 5):
it exits at once with one line saying what to set, and leaves no process or data directory.

HOME and the XDG directories point at a fresh directory, so the per-user data directory where an
embedded server would put its data (platformdirs) is known and empty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.acceptance.conftest import clean_env

CELERY = Path(sys.executable).with_name("celery")
LINE = (
    "stocksync: configuration error: STOCKSYNC_DATABASE_URL is not set: set it to a PostgreSQL "
    "URL (postgresql+psycopg://…), or use `stocksync run`, which starts the embedded PostgreSQL"
)


def _processes_under(path: Path) -> list[str]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.parametrize(
    "argv",
    [["inspect", "ping", "--timeout", "5"], ["worker", "--concurrency", "1"], ["beat"]],
    ids=["inspect-ping", "worker", "beat"],
)
def test_celery_with_nothing_configured_says_what_to_set_and_starts_nothing(
    tmp_path: Path, argv: list[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    kinds = ("DATA", "CONFIG", "CACHE", "STATE")
    xdg = {f"XDG_{kind}_HOME": str(home / kind.lower()) for kind in kinds}
    env = clean_env(HOME=str(home), XDG_RUNTIME_DIR=str(home / "run"), **xdg)

    done = subprocess.run(
        [str(CELERY), "-A", "worker", *argv],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [LINE]  # one line, no traceback
    assert _processes_under(home) == []
    assert sorted(p.name for p in home.rglob("*")) == [], "nothing written under HOME or XDG"
