"""The chaos run keeps every promise while everything around the service fails.

One run per module (the `chaos_run` fixture, tests/smoke/conftest.py): its own PostgreSQL
(embedded), RabbitMQ node and sandbox; the worker's process group SIGKILLed every few seconds,
the broker node and PostgreSQL restarted once; 5xx, 420s, latency and dropped connections from
the Market. The machine's shared services are never touched. Short by default (what CI runs);
`STOCKSYNC_CHAOS_SECONDS=180` makes the full run.
"""

from __future__ import annotations

import pytest

from tests.smoke.chaos import ChaosConfig, ChaosResult

pytestmark = [
    pytest.mark.slow,
    # The first test sets the run up and waits for it: the timeout covers the whole run.
    pytest.mark.timeout(ChaosConfig.from_environment().longest_seconds()),
]


def assert_check_passed(run: ChaosResult, number: int) -> None:
    """Check `number` of the five passed; the message names it with its detail and the table."""
    verdict = run.verdicts[number]
    assert verdict.ok, f"{verdict.name}: {verdict.detail}\n{run.report()}"


def test_faults_really_hit_the_service(chaos_run: ChaosResult) -> None:
    # The broker restart really happened (no fallback to the shared broker), and so did the rest.
    assert not chaos_run.shared_broker, "no RabbitMQ node of its own: the restart was skipped"
    assert chaos_run.broker_restarts == 1, chaos_run.report()
    assert chaos_run.postgres_restarts == 1, chaos_run.report()
    assert chaos_run.worker_kills >= 3, chaos_run.report()
    assert chaos_run.drained, chaos_run.report()


def test_market_holds_the_contract_value_of_every_key(chaos_run: ChaosResult) -> None:
    assert_check_passed(chaos_run, 1)


def test_no_change_is_lost_or_applied_twice(chaos_run: ChaosResult) -> None:
    assert_check_passed(chaos_run, 2)


def test_no_request_breaks_the_page_rules(chaos_run: ChaosResult) -> None:
    assert_check_passed(chaos_run, 3)


def test_no_rolling_minute_exceeds_the_rate_limit(chaos_run: ChaosResult) -> None:
    assert_check_passed(chaos_run, 4)


def test_no_push_overwrites_a_newer_value(chaos_run: ChaosResult) -> None:
    assert_check_passed(chaos_run, 5)
