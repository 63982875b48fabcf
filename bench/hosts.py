"""Workers on several hosts: 2 x 20,000 pending keys at 6,000 SKUs a minute over three hosts.

Run (as root: network namespaces): .venv/bin/python -m bench.hosts [--keys N]
The scenario of tests/integration/test_several_hosts.py at full size, on the same rig
(tests/hosts_rig.py): three workers, each in a network namespace of its own reaching PostgreSQL,
RabbitMQ and the sandbox only over its veth; one 20 s behind (libfaketime); beat on two of them.
Two campaigns get `keys` pending keys each in one commit (an absolute count each, a delta on every
tenth); the clock runs from that commit until every key is acknowledged and nothing is in flight.
The sandbox reports the largest number of SKUs it accepted for a campaign in any rolling minute,
the most requests of a campaign it had in flight at once, the 420s, and every key's final count.
The limit is per campaign (as the Market's): both campaigns send side by side, so the ideal is
keys / limit minutes; the rolling window lets a minute's worth go at once, so the last batch can
leave after (ceil(keys / limit) - 1) minutes.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from bench import RESULTS
from bench.drain_throughput import fresh_services
from tests import hosts_rig


def main() -> None:
    """Runs the benchmark and prints (and stores) its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=20_000, help="pending keys per campaign")
    parser.add_argument("--limit", type=int, default=6_000, help="SKUs a minute per campaign")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    log_dir = RESULTS / f"hosts-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    with fresh_services() as (database_url, broker, engine):
        result = hosts_rig.run(
            engine,
            database_url,
            broker,
            log_dir,
            keys=args.keys,
            limit=args.limit,
            parallel=2,
            timeout=args.keys / args.limit * 60 * 3 + 120,
        )
    result["started_at"] = started_at
    result["ratio_to_ideal"] = round(result["seconds"] / result["ideal_seconds"], 3)
    (RESULTS / f"hosts-{stamp}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
