"""Bench-only additions to the production worker: `celery -A worker worker -I bench.noop_tasks`.

- `bench.noop`: a task that does nothing, registered on the production app (`worker.app.app`,
  built from `worker.app.celery_config`), with the same options as `stocks.submit` and called with
  the same arguments, so that its rate is the floor cost of the broker and the worker machinery.
- With `BENCH_PROFILE_DIR` set, every worker process (the main one, which consumes and
  acknowledges, and each pool child, which runs tasks) runs under cProfile, timed by the
  process's CPU clock (the machine is CPU-bound; waiting is not cost), and dumps its stats there
  when it exits.
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path
from typing import Any

from celery import Task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from worker.app import app

_PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
_profiler: cProfile.Profile | None = None


@app.task(name="bench.noop", bind=True, acks_late=True, reject_on_worker_lost=True)
def noop(self: Task, *args: Any, **kwargs: Any) -> None:
    """Does nothing; a `marker` keyword (the bench's last message) is touched to say it ran."""
    marker = kwargs.get("marker")
    if marker:
        Path(marker).touch()


def _start_profile(**_: Any) -> None:
    global _profiler  # noqa: PLW0603 - one profiler per process
    _profiler = cProfile.Profile(time.process_time)
    _profiler.enable()


def _dump_profile(role: str) -> None:
    if _profiler is None or _PROFILE_DIR is None:
        return
    _profiler.disable()
    _profiler.dump_stats(str(Path(_PROFILE_DIR) / f"{role}-{os.getpid()}.prof"))


if _PROFILE_DIR:
    worker_init.connect(_start_profile, weak=False)
    worker_shutdown.connect(lambda **_: _dump_profile("main"), weak=False)
    worker_process_init.connect(_start_profile, weak=False)
    worker_process_shutdown.connect(lambda **_: _dump_profile("child"), weak=False)
