"""`stocksync` as an operator runs it: migrate, status and bad settings, against real PostgreSQL."""

from __future__ import annotations

import json

import psycopg
import pytest
from sqlalchemy import Engine, text

from tests.acceptance.conftest import RunStocksync, clean_env

EXPECTED_TABLES = {"alembic_version", "change_log", "stock", "rejected"}

# Group [1001, 1002] keys its stock under 1001; campaign 2001 stands alone.
GROUPS = "[[1001, 1002]]"

_KNOWN_STATE = """
    INSERT INTO stock (group_id, sku, delta_sum, version, changed_at,
                       acked_version, acked_value, acked_at)
    VALUES
        -- 1001: two pending keys, the older changed 600 s ago; one key acked at 09:00Z.
        (1001, 'A-1', 5, 1, now() - interval '600 seconds', 0, NULL, NULL),
        (1001, 'A-2', 3, 2, now() - interval '30 seconds', 1, 1, '2026-11-28 08:00:00+00'),
        (1001, 'A-3', 4, 1, now() - interval '2 hours', 1, 4, '2026-11-28 09:00:00+00'),
        -- 2001: nothing pending, last acked at 07:30Z.
        (2001, 'B-1', 9, 3, now() - interval '1 day', 3, 9, '2026-11-28 07:30:00+00');
    INSERT INTO campaign (campaign_id, last_push_at)
    VALUES (1001, '2026-11-28 09:00:00+00'), (2001, '2026-11-28 07:30:00+00');
    INSERT INTO rejected (task_id, position, campaign_id, raw, reason)
    VALUES
        ('t1', 0, 1001, '{}', 'sku: must match the Market pattern'),
        ('t1', 1, 1002, '{}', 'delta: exactly one of delta and count'),
        ('t2', 0, 3001, '{}', 'count: must be ≤ 2000000000'),
        ('t2', 1, NULL, '{}', 'campaign_id: must be an integer'),
        ('t3', -1, NULL, '"garbage"', 'changes: must be a list');
"""


def _tables(url: str) -> set[str]:
    libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {name for (name,) in rows}


def _insert_known_state(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(_KNOWN_STATE))


def test_help_lists_the_commands(stocksync: RunStocksync) -> None:
    result = stocksync("--help")

    assert result.returncode == 0
    for command in ("migrate", "run", "status", "sandbox"):
        assert command in result.stdout


def test_unknown_option_is_refused_with_usage(stocksync: RunStocksync) -> None:
    result = stocksync("status", "--no-such-option")

    assert result.returncode == 64  # usage: 2 is "needs attention"
    assert "unrecognized arguments: --no-such-option" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),  # no command
        ("verify", "--campaign", "many"),  # a value of the wrong type
        ("rejected", "--limit", "0"),  # a value out of range
        ("replay",),  # neither task ids nor --all
        ("import", "stock.csv"),  # a required option left out
    ],
    ids=["no-command", "bad-type", "bad-range", "replay-nothing", "missing-option"],
)
def test_every_usage_error_exits_64(
    stocksync: RunStocksync, database_url: str, args: tuple[str, ...]
) -> None:
    result = stocksync(*args, STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 64, result.stderr
    assert "Traceback" not in result.stderr


def test_version_is_the_installed_distributions(stocksync: RunStocksync) -> None:
    from importlib.metadata import version

    result = stocksync("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stocksync {version('stocksync')}"


@pytest.mark.parametrize("command", ["status", "rejected", "verify", "prune", "migrate"])
def test_an_unreachable_database_exits_3_cannot_check(
    stocksync: RunStocksync, command: str
) -> None:
    from tests import services

    nowhere = f"postgresql+psycopg://postgres@127.0.0.1:{services.free_port()}/stocksync"

    result = stocksync(command, STOCKSYNC_DATABASE_URL=nowhere)

    assert result.returncode == 3, result.stdout + result.stderr
    assert "stocksync: database error:" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_database_not_migrated_exits_3_saying_so(
    stocksync: RunStocksync, empty_database_url: str
) -> None:
    result = stocksync("status", STOCKSYNC_DATABASE_URL=empty_database_url)

    assert result.returncode == 3, result.stderr
    assert "run `stocksync migrate`" in result.stderr


def test_sandbox_gets_every_argument_after_its_name(stocksync: RunStocksync) -> None:
    result = stocksync("sandbox", "--help")

    assert result.returncode == 0, result.stderr
    assert "usage: stocksync sandbox" in result.stdout
    assert "--port" in result.stdout


def test_migrate_creates_the_tables_on_an_empty_database(
    stocksync: RunStocksync, empty_database_url: str
) -> None:
    assert _tables(empty_database_url) == set()

    result = stocksync("migrate", STOCKSYNC_DATABASE_URL=empty_database_url)

    assert result.returncode == 0, result.stderr
    assert "(head)" in result.stdout
    assert _tables(empty_database_url) >= EXPECTED_TABLES


def test_migrate_twice_changes_nothing_the_second_time(
    stocksync: RunStocksync, empty_database_url: str
) -> None:
    first = stocksync("migrate", STOCKSYNC_DATABASE_URL=empty_database_url)
    tables = _tables(empty_database_url)

    second = stocksync("migrate", STOCKSYNC_DATABASE_URL=empty_database_url)

    assert (first.returncode, second.returncode) == (0, 0), second.stderr
    assert "Running upgrade" not in second.stderr
    assert _tables(empty_database_url) == tables


def test_status_json_reports_the_known_state(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_known_state(engine)

    result = stocksync(
        "status",
        "--json",
        "--max-age",
        "3600",
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_WAREHOUSE_GROUPS=GROUPS,
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    campaigns = {c["campaign_id"]: c for c in report["campaigns"]}
    assert list(campaigns) == [1001, 2001, 3001]
    group = campaigns[1001]
    assert group["pending_keys"] == 2
    assert 600 <= group["oldest_pending_age_seconds"] < 660
    assert group["last_push_at"] == "2026-11-28T09:00:00+00:00"
    assert group["rejected"] == 2  # its own refusal and 1002's, the same group
    assert group["parked_reason"] is None
    assert campaigns[2001] == {
        "campaign_id": 2001,
        "pending_keys": 0,
        "oldest_pending_age_seconds": None,
        "parked_skus": 0,
        "last_push_at": "2026-11-28T07:30:00+00:00",
        "parked_reason": None,
        "degraded_reason": None,
        "blocked_until": None,
        "skus_pushed_last_minute": 0,
        "skus_pushed_last_hour": 0,
        "requests_last_minute": 0,
        "requests_last_hour": 0,
        "rate_limited_last_hour": 0,
        "failed_last_hour": 0,
        "skus_in_rate_window": 0,
        "rejected": 0,
        # sent by v2 (issue 9) and not read back yet (issue 8)
        "method": "v2",
        "business_id": None,
        "last_full_sweep_at": None,
        "keys_checked_last_day": 0,
        "drift_found_total": 0,
        "drift_repaired_total": 0,
        "keeps_drifting": 0,
    }
    assert campaigns[3001]["rejected"] == 1
    assert campaigns[3001]["pending_keys"] == 0
    assert campaigns[3001]["last_push_at"] is None
    assert report["unreadable_messages"] == 1
    assert report["rejected_without_campaign"] == 1


def test_status_json_reports_a_v3_business_against_its_request_limit(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    # Business 901's requests (route key -901): three answered in its window, one 5xx (the Market
    # does not count it), one the Market counted beyond ours (-Remaining), one long gone.
    with engine.begin() as conn:
        conn.execute(
            text("""
            INSERT INTO market_request (campaign_id, skus, started_at, finished_at, status,
                                        correction)
            VALUES (-901, 2000, now() - interval '20 seconds', now() - interval '19 seconds', 200,
                    false),
                   (-901, 2000, now() - interval '10 seconds', now() - interval '9 seconds', 200,
                    false),
                   (-901, 5, now() - interval '8 seconds', now() - interval '7 seconds', 400,
                    false),
                   (-901, 0, now() - interval '6 seconds', now() - interval '5 seconds', 503,
                    false),
                   (-901, 2, now() - interval '9 seconds', now() - interval '9 seconds', NULL,
                    true),
                   (-901, 2000, now() - interval '50 minutes', now() - interval '50 minutes',
                    200, false)
            """)
        )

    result = stocksync(
        "status",
        "--json",
        STOCKSYNC_DATABASE_URL=database_url,
        STOCKSYNC_V3_CAMPAIGNS='{"4001": {"business_id": 901, "warehouse_id": 7001}}',
        STOCKSYNC_V3_REQUESTS_PER_MINUTE="40",
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["v3_businesses"] == [
        {
            "business_id": 901,
            "campaigns": [4001],
            "requests_last_minute": 4,
            "requests_per_minute_limit": 40,
            # what the limiter holds the next request against: 200, 200, 400 and the Market's 2
            "requests_in_rate_window": 5,
            "items_pushed_last_minute": 4000,
            "requests_last_hour": 5,
            "rate_limited_last_hour": 0,
            "failed_last_hour": 1,
            "parked_reason": None,
            "blocked_until": None,
        }
    ]


def test_status_exits_2_when_the_oldest_pending_change_is_too_old(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_known_state(engine)

    result = stocksync("status", STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 2
    assert "campaign 1001" in result.stderr
    assert "2001" not in result.stderr


def test_status_exits_0_when_every_pending_change_is_young_enough(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_known_state(engine)

    result = stocksync("status", "--json", "--max-age", "700", STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 0, result.stderr


def test_status_table_is_aligned(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    _insert_known_state(engine)

    result = stocksync("status", "--max-age", "3600", STOCKSYNC_DATABASE_URL=database_url)

    lines = result.stdout.splitlines()
    header, first, second = lines[0], lines[1], lines[2]
    assert header.split()[:2] == ["campaign", "pending"]
    column = header.index("rejected")
    assert first.startswith("1001 ")
    assert first[column:].split()[0] == "1"  # without groups 1002 is a campaign of its own
    assert second.startswith("1002 ")
    assert "unreadable messages: 1" in lines
    assert "rejected changes without a valid campaign: 1" in lines


def _parked_and_stale(engine: Engine) -> None:
    """1001 with a change pending for 10 minutes, 7 parked with a long reason."""
    _insert_known_state(engine)
    reason = "HTTP 403: the key lacks access to this campaign, ask for offers-and-cards-management"
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO campaign (campaign_id, parked_reason) VALUES (7, :reason)"),
            {"reason": reason},
        )


def test_status_table_fits_a_narrow_terminal(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    from stocksync.commands.status import COLUMNS

    _parked_and_stale(engine)

    wide = stocksync("status", STOCKSYNC_DATABASE_URL=database_url)  # a pipe: every column
    narrow = stocksync("status", STOCKSYNC_DATABASE_URL=database_url, COLUMNS="60")

    assert (wide.returncode, narrow.returncode) == (2, 2)
    assert all(column.header in wide.stdout.splitlines()[0] for column in COLUMNS), wide.stdout
    assert max(len(line) for line in wide.stdout.splitlines()) > 60
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 60, narrow.stdout
    header = lines[0]
    assert header.split("  ")[:3] == ["campaign", "pending", "oldest pending"]
    assert header.rstrip().endswith("state")
    assert "sent by" not in header  # the least important columns went first
    assert "parked: HTTP 403: the key" in narrow.stdout  # the state wraps, whole
    assert "offers-and-cards-manage" in narrow.stdout
    assert "\x1b[" not in wide.stdout + narrow.stdout  # no terminal: no colour


def _status_on_a_terminal(database_url: str, **variables: str) -> str:
    """`stocksync status` with its stdout on a pseudo-terminal, as a person runs it."""
    import os
    import pty
    import subprocess

    from tests.acceptance.conftest import STOCKSYNC

    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [str(STOCKSYNC), "status"],
        stdout=secondary,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=clean_env(STOCKSYNC_DATABASE_URL=database_url, COLUMNS="100", **variables),
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(60) == 2
    return output.decode()


def test_status_colours_parked_and_stale_only_on_a_terminal(
    database_url: str, engine: Engine
) -> None:
    import re

    _parked_and_stale(engine)

    coloured = _status_on_a_terminal(database_url)
    plain = _status_on_a_terminal(database_url, NO_COLOR="1")

    red = re.escape("\x1b[1;31m")
    assert re.search(red + r"parked: HTTP 403", coloured), coloured
    assert re.search(red + r"10m\d\ds", coloured), coloured  # older than --max-age: stale
    assert "\x1b[" not in plain
    assert "parked: HTTP 403" in plain
    visible = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert max(len(line) for line in visible.splitlines()) <= 100


def test_status_of_an_empty_outbox_exits_0(stocksync: RunStocksync, database_url: str) -> None:
    result = stocksync("status", "--json", STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["campaigns"] == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STOCKSYNC_WAREHOUSE_GROUPS", "[[1001, 1002], [1002]]"),
        ("STOCKSYNC_WAREHOUSE_GROUPS", "not json"),
        ("STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN", "7"),
        ("STOCKSYNC_DATABASE_URL", "mysql://root@localhost/stock"),
    ],
)
@pytest.mark.parametrize("command", ["migrate", "status", "run"])
def test_bad_setting_exits_64_naming_the_variable(
    stocksync: RunStocksync, command: str, variable: str, value: str
) -> None:
    result = stocksync(command, **{variable: value})

    assert result.returncode == 64
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


def test_status_exits_2_when_a_campaign_is_parked(
    stocksync: RunStocksync, database_url: str, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO campaign (campaign_id, parked_reason) VALUES (7, 'HTTP 403: x')")
        )

    result = stocksync("status", STOCKSYNC_DATABASE_URL=database_url)

    assert result.returncode == 2
    assert "campaign 7 is parked: HTTP 403: x" in result.stderr
    assert "parked: HTTP 403: x" in result.stdout


def test_metrics_endpoint_serves_the_figures(database_url: str, engine: Engine) -> None:
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests import services
    from worker.ingest import store_unreadable

    with engine.begin() as conn:
        conn.execute(text(_KNOWN_STATE))
    store_unreadable(engine, "t4", "garbage", "changes: must be a list")
    port = services.free_port()
    env = services.clean_env(STOCKSYNC_DATABASE_URL=database_url)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stocksync", "metrics", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert 'stocksync_pending_keys{campaign="1001"} 2.0' in body
    assert "stocksync_unreadable_messages_total 1.0" in body
    assert proc.returncode == 0
