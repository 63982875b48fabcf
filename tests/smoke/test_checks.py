"""The chaos run's five checks fail when their promise is broken (no services: made-up facts)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.smoke.checks import Facts, verdicts
from tests.smoke.producer import Ledger, Sent

LIMIT = 800
GROUPS = [[1001, 1002]]
EARLIER = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _ledger() -> Ledger:
    ledger = Ledger()
    ledger.valid["e:1"] = Sent(key=(1001, "A"), delta=None, count=5, at=EARLIER)
    ledger.valid["e:2"] = Sent(key=(1001, "A"), delta=2, count=None, at=None)
    ledger.valid["e:3"] = Sent(key=(2001, "B"), delta=-3, count=None, at=None)
    ledger.invalid.add(("task-1", 0))
    return ledger


def _stats(**changes: Any) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "requests_by_status": {"200": 2},
        "campaigns": {
            "1001": {"max_skus_accepted_in_window": 1, "stale_overwrites": 0},
            "2001": {"max_skus_accepted_in_window": 1, "stale_overwrites": 0},
        },
        "rate_limited": 0,
        "parallel_limited": 0,
        "injected": {},
        "stale_overwrites": 0,
    }
    stats.update(changes)
    return stats


def _kept_promises() -> Facts:
    return Facts(
        change_log=3,
        rejected=1,
        db_values={(1001, "A"): 7, (2001, "B"): -3},
        pending=0,
        parked=0,
        market={1001: {"A": 7}, 2001: {"B": 0}},
        stats=_stats(),
    )


BROKEN = {
    1: lambda f: replace(f, market={1001: {"A": 6}, 2001: {"B": 0}}),
    2: lambda f: replace(f, change_log=4),
    3: lambda f: replace(f, stats=_stats(requests_by_status={"200": 1, "400": 1})),
    4: lambda f: replace(f, stats=_stats(rate_limited=1)),
    5: lambda f: replace(f, stats=_stats(stale_overwrites=1)),
}


def test_kept_promises_pass_all_five_checks() -> None:
    results = verdicts(_ledger(), _kept_promises(), GROUPS, LIMIT)
    assert [(v.name[0], v.ok) for v in results] == [(str(n), True) for n in range(1, 6)]


@pytest.mark.parametrize("number", sorted(BROKEN))
def test_a_broken_promise_fails_its_check_and_only_its_own(number: int) -> None:
    facts = BROKEN[number](_kept_promises())
    failed = [v.name[0] for v in verdicts(_ledger(), facts, GROUPS, LIMIT) if not v.ok]
    assert failed == [str(number)]
