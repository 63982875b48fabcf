"""Retry delays: exponential with jitter, never zero, bounded."""

from __future__ import annotations

import random


def backoff_seconds(
    attempt: int,
    base: float = 0.5,
    cap: float = 4.0,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry `attempt` (0-based): uniform in [step/2, step], step = min(cap, base*2^n).

    Half of the step is kept so a retry never fires at once (Celery's own jitter can pick 0).
    """
    step = min(cap, base * (2**attempt))
    return (rng or random).uniform(step / 2, step)
