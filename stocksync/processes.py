"""Child-process primitives shared by `stocksync demo`, the tests and the benchmarks: a free port,
a ready-poller, an environment without the caller's STOCKSYNC_* settings, a process-group stop.

One copy of each: the demo's launcher, `tests/services.py` and `bench/` all use these.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SETTINGS_PREFIX = "STOCKSYNC_"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on `host:port`."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Polls `condition` until it is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class ProcessExited(RuntimeError):
    """The child process ended while it was awaited."""


def wait_for_log_line(
    process: subprocess.Popen[bytes],
    log_path: Path,
    offset: int,
    timeout: float,
    marker: bytes = b" ready.",
) -> None:
    """Waits until `marker` stands in `log_path` after byte `offset` (what this start wrote);
    ProcessExited if `process` ends first, TimeoutError after `timeout` seconds."""

    def logged() -> bool:
        if process.poll() is not None:
            raise ProcessExited(f"exited with code {process.returncode}")
        with log_path.open("rb") as log:
            log.seek(offset)
            return marker in log.read()

    wait_for(f"{marker.decode().strip()!r} in {log_path.name}", logged, timeout, interval=0.1)


def clean_env(**variables: str) -> dict[str, str]:
    """This process's environment without any STOCKSYNC_* variable, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTINGS_PREFIX)}
    env.update(variables)
    return env


def with_project_on_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this project first on PYTHONPATH: a child in another directory imports it."""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def kill_process_group(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGKILL to the process group `process` leads (started with start_new_session=True)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


def stop_process_group(
    process: subprocess.Popen[bytes], timeout: float = 30.0, *, whole_group: bool = True
) -> bool:
    """SIGTERM (to the group, or with `whole_group=False` to the leader only, which then stops
    its own children in order), SIGKILL to the group after `timeout`; True when it stopped in
    time. Whatever of the group is left afterwards is killed too."""
    if process.returncode is not None:
        return True  # stopped and reaped before: its group id may belong to another by now
    stopped = True
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if whole_group:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stopped = False
    kill_process_group(process, timeout)
    return stopped
