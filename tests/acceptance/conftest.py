"""The real `stocksync` console script, run in subprocesses with a clean environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import services
from tests.services import clean_env

__all__ = ["clean_env"]

STOCKSYNC = Path(sys.executable).with_name("stocksync")

RunStocksync = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def stocksync(tmp_path: Path) -> RunStocksync:
    """Runs `stocksync ARGS…` in an empty directory (no .env) with only the given variables."""
    assert STOCKSYNC.is_file(), f"{STOCKSYNC} missing: install the project (pip install -e .)"

    def run(*args: str, timeout: float = 120, **variables: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(STOCKSYNC), *args],
            check=False,
            cwd=tmp_path,
            env=clean_env(**variables),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run


@pytest.fixture
def empty_database_url() -> Iterator[str]:
    """A database with no table at all, dropped afterwards."""
    name = f"stocksync_empty_{os.getpid()}_{os.urandom(4).hex()}"
    services.admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield services.url_for_database(name)
    finally:
        services.drop_database(name)
