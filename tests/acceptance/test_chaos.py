"""The chaos run, short: `bench/chaos.py --quick` keeps every promise while everything fails.

The run brings its own PostgreSQL (embedded), RabbitMQ node and sandbox, kills the worker's
process group every few seconds, restarts the broker node and PostgreSQL once, and injects 5xx,
420s, latency and dropped connections; the machine's shared services are never touched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 170


def _run_quick_chaos() -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKSYNC_")}
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--quick", "--seed", "7"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: the run then stops every service it started.
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
        pytest.fail(f"the chaos run took over {RUN_TIMEOUT_SECONDS}s:\n{output[-8000:]}")
    return process.returncode, output


def test_quick_chaos_run_keeps_every_promise() -> None:
    code, output = _run_quick_chaos()
    tail = output[-8000:]
    assert code == 0, tail
    verdicts = re.findall(r"^  ([1-5] .+?)\s{2,}(PASS|FAIL)\s", output, re.MULTILINE)
    assert [name[0] for name, _ in verdicts] == ["1", "2", "3", "4", "5"], tail
    assert all(verdict == "PASS" for _, verdict in verdicts), tail
    # The broker restart really happened (no fallback to the shared broker), and so did the rest.
    assert re.search(r"RabbitMQ restarts\s+1$", output, re.MULTILINE), tail
    assert re.search(r"PostgreSQL restarts\s+1$", output, re.MULTILINE), tail
    kills = re.search(r"worker SIGKILLs \(process group\)\s+(\d+)$", output, re.MULTILINE)
    assert kills is not None and int(kills.group(1)) >= 3, tail
    assert "RESULT: PASS" in output, tail
