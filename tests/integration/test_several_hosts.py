"""Workers on several hosts (issue 10, item 3): three real workers, each in a network namespace of
its own (tests/hosts_rig.py), reaching PostgreSQL, RabbitMQ and the sandbox only over their veths;
one host's clock 20 s behind (libfaketime), beat running twice by mistake (on a right host and on
the skewed one). The Market sandbox judges: no rolling minute above the limit, in-flight never
above the setting, no 420, every key right. The long run is `python -m bench.hosts`.

Needs root and `ip netns` (CI has both); without them the test fails, it never skips.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests import hosts_rig

pytestmark = pytest.mark.slow

LIMIT = 6_000
PARALLEL = 2


@pytest.fixture(autouse=True)
def _no_namespace_left_behind() -> Iterator[None]:
    """Whatever happened in the test (the rig removes its own namespaces on every way out), none
    it made outlives it: their processes are killed and they are deleted here, and the test
    fails if there was one to delete."""
    before = set(hosts_rig.MADE)
    yield
    left = (hosts_rig.MADE - before) & hosts_rig.namespaces()
    for name in left:
        hosts_rig.remove_namespace(name)
    assert not left, f"network namespaces left behind: {sorted(left)}"


def test_three_hosts_one_clock_off_beat_twice_keep_the_limits_and_every_key_right(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    # Given two campaigns with 6,000 pending keys each: a whole minute's limit, three batches of
    # 2,000 for two parallel slots, so that any SKU sent twice would show above the limit; the
    # Market takes 1.5 s over each request, so the batches meet there
    result = hosts_rig.run(
        engine,
        database_url,
        rabbit_url,
        tmp_path,
        keys=LIMIT,
        limit=LIMIT,
        parallel=PARALLEL,
        timeout=45,
        latency_ms=1500,
    )
    # Then the Market saw no minute above the limit, no more in flight than the setting, no 420
    assert result["max_rolling_minute"] <= LIMIT, result
    assert result["max_in_flight"] == PARALLEL, result
    assert result["r420"] == 0, result
    assert set(result["requests_by_status"]) == {"200"}, result
    # and every key ends right, each sent once
    assert result["wrong_keys"] == 0, result
    assert result["skus_accepted"] == result["keys"], result
    assert result["stale_overwrites"] == 0, result
    # Every host took part, and no drain a beat sent was thrown away as expired: the skewed
    # host's beat stamps drains 20 s in the past on its own clock
    hosts = result["tasks_by_host"]
    assert all(h["drains"] > 0 for h in hosts), hosts
    assert sum(h["discarded_drains"] for h in hosts) == 0, hosts
