"""domain/backoff.py: retry delays with jitter, never zero, bounded."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from domain.backoff import backoff_seconds


def test_backoff_grows_is_bounded_and_never_zero() -> None:
    rng = random.Random(7)
    delays = [[backoff_seconds(a, base=0.5, cap=4.0, rng=rng) for a in range(8)] for _ in range(50)]
    assert all(0.25 <= d[0] <= 0.5 for d in delays)
    assert all(2.0 <= d[7] <= 4.0 for d in delays)
    assert min(min(d) for d in delays) > 0


@given(st.integers(0, 40), st.integers(0, 2**32))
def test_every_delay_is_half_to_all_of_its_capped_step(attempt: int, seed: int) -> None:
    delay = backoff_seconds(attempt, base=0.5, cap=4.0, rng=random.Random(seed))
    step = min(4.0, 0.5 * 2**attempt)
    assert step / 2 <= delay <= step
