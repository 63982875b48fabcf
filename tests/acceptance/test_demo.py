"""`stocksync demo` as a newcomer runs it: nothing configured, a fresh HOME and temp directory.

It must pass, show the rejected changes' reasons, and leave no process (worker, beat, pool,
embedded PostgreSQL) and no file behind: after success, after Ctrl-C, and after a failure.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.acceptance.conftest import STOCKSYNC, clean_env

# Small enough for CI on two cores, large enough to hold every kind of change.
DEMO_ARGS = ("--changes", "300", "--duration", "4", "--timeout", "60")
RUN_TIMEOUT = 150.0
REJECTION_REASONS = (
    "sku: must match the Market pattern",
    "delta: must be an integer",
    "campaign_id: is required",
    "count: must be an integer",
    "warehouse_id: is not a known field",
)


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh, short HOME with its own TMPDIR (the embedded server's socket path is short)."""
    path = Path(tempfile.mkdtemp(prefix="ss-demo-", dir="/tmp"))
    (path / "tmp").mkdir()
    yield path
    for process in _processes_of(path):  # only when a test failed: don't leak into the next
        process.kill()
    shutil.rmtree(path, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = clean_env(HOME=str(home), TMPDIR=str(home / "tmp"))
    env.pop("XDG_DATA_HOME", None)
    return env


def _processes_of(home: Path) -> list[psutil.Process]:
    """Live processes of a demo run under `home`: named in their command line, or its HOME."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(info["cmdline"] or [])
        if str(home) in cmdline or (info["environ"] or {}).get("HOME") == str(home):
            found.append(process)
    return found


def _assert_nothing_left(home: Path) -> None:
    left = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in _processes_of(home)]
    assert left == [], f"still running after the demo: {left}"
    # (pgserver keeps its lock file in the per-user runtime directory, under TMPDIR here.)
    leftovers = list((home / "tmp").glob("stocksync-demo-*"))
    assert leftovers == [], "the demo's temporary data directory was not removed"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_passes_on_nothing_configured_and_leaves_nothing_behind(home: Path) -> None:
    result = subprocess.run(
        [str(STOCKSYNC), "demo", *DEMO_ARGS],
        cwd=home,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "PASS" in result.stdout.splitlines()
    assert "Market state           equals the expected state" in result.stdout
    assert "rejected changes       5 (expected 5)" in result.stdout
    for reason in REJECTION_REASONS:
        assert reason in result.stdout
    assert "freshness              p50" in result.stdout
    assert "Traceback" not in output
    _assert_nothing_left(home)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_interrupted_by_ctrl_c_stops_everything_it_started(home: Path) -> None:
    demo = subprocess.Popen(
        [str(STOCKSYNC), "demo", "--changes", "300", "--duration", "30"],
        cwd=home,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert demo.stdout is not None
    seen = []
    try:
        for line in demo.stdout:  # wait until changes flow through the worker
            seen.append(line)
            if line.startswith("[") and "sent" in line and not line.startswith("[  0.0s]"):
                demo.send_signal(signal.SIGINT)
                break
        rest, _ = demo.communicate(timeout=RUN_TIMEOUT)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = "".join(seen) + rest

    assert demo.returncode == 130, output[-6000:]
    assert "interrupted" in output
    assert "stopped the worker and beat" in output
    assert "stopped PostgreSQL" in output
    _assert_nothing_left(home)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_that_times_out_fails_and_still_stops_everything(home: Path) -> None:
    # The drain runs every second: the Market cannot be right 0.2 s after the first message.
    result = subprocess.run(
        [str(STOCKSYNC), "demo", "--changes", "100", "--duration", "0", "--timeout", "0.2"],
        cwd=home,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )

    assert result.returncode == 2, (result.stdout + result.stderr)[-6000:]
    assert "FAIL" in result.stdout.splitlines()
    assert "timed out" in result.stdout
    _assert_nothing_left(home)
