"""Security of a running service: the Market key never shows (logs, task arguments, Flower,
exceptions), Flower asks for its password, TLS to the Market is always verified, and SKUs that
look like SQL are only data (CONTRACT.md sections 3 and 4)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery
from pydantic import SecretStr
from sqlalchemy import Engine, text

from sandbox.config import SandboxConfig
from sandbox.handler import SandboxHTTPServer
from sandbox.server import MarketSandbox
from sandbox.state import SandboxState
from tests.integration.broker_support import CHANGES_QUEUE, wait_for
from tests.integration.drain_support import SECRET_KEY, counts_at, pending_keys, running_worker
from tests.services import ROOT, WorkerProcess, free_port, service_env
from worker.market_client import MarketClient
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.slow

FLOWER_USER, FLOWER_PASSWORD = "operator", f"pw-{uuid.uuid4().hex}"


def stocks_body() -> bytes:
    updated_at = datetime.now(UTC).isoformat()
    return json.dumps(
        {"skus": [{"sku": "A", "items": [{"count": 1, "updatedAt": updated_at}]}]}
    ).encode()


@contextmanager
def running_flower(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """`celery -A worker flower` with basic auth on a free local port; yields its base URL."""
    port = free_port()
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}"),
                *("--address=127.0.0.1", f"--basic_auth={FLOWER_USER}:{FLOWER_PASSWORD}"),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:

            def answers() -> bool:
                assert process.poll() is None, log_path.read_text(errors="replace")[-3000:]
                try:
                    return requests.get(f"{base}/healthcheck", timeout=2).status_code == 200
                except requests.ConnectionError:
                    return False

            wait_for("Flower to answer", answers, timeout=30)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def flower_get(base: str, path: str) -> requests.Response:
    response = requests.get(base + path, auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=30)
    assert response.status_code == 200, f"{path}: {response.status_code}"
    return response


def send_changes(rabbit_url: str) -> None:
    """Valid changes on two campaigns, a refused change and an unreadable message."""
    producer = Celery(broker=rabbit_url)
    try:
        for campaign in (1001, 1002):
            changes = [{"campaign_id": campaign, "sku": f"S{i}", "count": i} for i in range(40)]
            producer.send_task("stocks.submit", kwargs={"changes": changes}, queue=CHANGES_QUEUE)
        refused = [{"campaign_id": 1001, "sku": "BAD", "count": -1}]
        producer.send_task("stocks.submit", kwargs={"changes": refused}, queue=CHANGES_QUEUE)
        producer.send_task("stocks.submit", kwargs={"changes": "nope"}, queue=CHANGES_QUEUE)
    finally:
        producer.close()


def test_the_market_key_is_in_no_log_line_task_argument_flower_view_or_exception(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    # Given Flower, a worker with beat and a Market that fails often (5xx, dropped connections)
    with MarketSandbox(api_keys=[SECRET_KEY], seed=3) as sandbox:
        sandbox.configure(error_500_rate=0.2, drop_before_rate=0.2)
        sandbox.force_status(1001, 500)  # every push to 1001 fails until one has been retried
        env = service_env(
            database_url,
            rabbit_url,
            STOCKSYNC_MARKET_BASE_URL=sandbox.url,
            STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
        )
        flower_log, worker_log = tmp_path / "flower.log", tmp_path / "worker.log"
        with (
            running_flower(env, flower_log) as flower,
            running_worker(
                database_url, rabbit_url, sandbox, worker_log, market_timeout_seconds="2"
            ) as worker,
        ):
            # When changes go all the way to the Market
            send_changes(rabbit_url)
            wait_for(
                "a push to be retried",
                lambda: " retry: Retry in " in worker.log_text(),
                timeout=60,
            )
            sandbox.force_status(1001, None)
            wait_for(
                "the Market to hold every SKU",
                lambda: len(counts_at(sandbox, 1001)) == len(counts_at(sandbox, 1002)) == 40,
                timeout=90,
            )
            wait_for("the outbox to drain", lambda: pending_keys(engine) == 0, timeout=30)
            # Then Flower's API and pages, which show task arguments and errors, lack the key
            tasks = flower_get(flower, "/api/tasks").json()
            names = {t["name"] for t in tasks.values()}
            assert {"stocks.submit", "stocks.push"} <= names  # housekeeping sends no events
            assert any(t["name"] == "stocks.push" and t["args"] for t in tasks.values())
            # (the retried push carries its exception's traceback)
            assert any(t["name"] == "stocks.push" and t["traceback"] for t in tasks.values())
            shown = [json.dumps(tasks)]
            shown.append(flower_get(flower, "/api/workers?refresh=1").text)
            worker_name = next(t["worker"] for t in tasks.values() if t.get("worker"))
            for page in ("/", "/tasks", "/broker", f"/worker/{worker_name}"):
                shown.append(flower_get(flower, page).text)
            pages = [i for i, t in tasks.items() if t["name"] != "stocks.drain"][:150]
            shown += [flower_get(flower, f"/task/{task_id}").text for task_id in pages]
            shown.append(requests.get(f"{flower}/metrics", timeout=10).text)
            assert worker.process is not None and worker.process.poll() is None
    assert sandbox.stats()["campaigns"], "the Market was called"
    for view in shown:
        assert SECRET_KEY not in view
    # And so do the worker's and Flower's logs, which do speak of pushes and failures
    logs = worker_log.read_text(errors="replace") + flower_log.read_text(errors="replace")
    assert "push campaign=1001" in logs
    assert "status=500" in logs
    assert SECRET_KEY not in logs


def test_flower_asks_for_its_password_except_on_healthcheck_and_metrics(
    database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    env = service_env(database_url, rabbit_url, STOCKSYNC_MARKET_API_KEY=SECRET_KEY)
    with running_flower(env, tmp_path / "flower.log") as flower:
        for path in ("/", "/tasks", "/workers", "/broker", "/api/tasks", "/api/workers"):
            assert requests.get(flower + path, timeout=10).status_code == 401, path
            wrong = requests.get(flower + path, auth=(FLOWER_USER, "wrong"), timeout=10)
            assert wrong.status_code == 401, path
            assert flower_get(flower, path).status_code == 200
        # Flower 2 serves these two without a password (its docs/auth.rst says so): they must
        # stay on a private address (compose publishes Flower on 127.0.0.1 only)
        assert requests.get(flower + "/healthcheck", timeout=10).status_code == 200
        metrics = requests.get(flower + "/metrics", timeout=10)
        assert metrics.status_code == 200
        assert SECRET_KEY not in metrics.text


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@contextmanager
def https_market(cert: Path, key: Path) -> Iterator[tuple[str, SandboxState]]:
    """The sandbox behind TLS with the self-signed certificate; yields its URL and state."""
    state = SandboxState(SandboxConfig())
    server = SandboxHTTPServer(("127.0.0.1", 0), state, verbose=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def market_client(base_url: str) -> MarketClient:
    """The client as the worker builds it (worker/runtime.py), from the environment."""
    settings = load_settings()
    return MarketClient(
        base_url,
        settings.market_api_key,
        settings.market_oauth_token,
        settings.market_timeout_seconds,
    )


def test_verification_is_always_on_and_has_no_setting() -> None:
    assert MarketClient("https://example.invalid", SecretStr("k"), None, 10).session.verify is True
    # The read-back sweep's settings (contract 3b: STOCKSYNC_VERIFY_*) verify stock, not TLS.
    read_back = {
        "verify_hours",
        "verify_stock_type",
        "verify_read_limit_per_minute",
        "verify_v3_read_limit_per_minute",
        "verify_read_share",
        "verify_interval_seconds",
    }
    assert not [
        name
        for name in Settings.model_fields
        if name not in read_back
        and any(word in name for word in ("verify", "ssl", "tls", "cert", "insecure"))
    ]


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"REQUESTS_CA_BUNDLE": ""},
        {"CURL_CA_BUNDLE": ""},
        {"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": ""},
        {"CURL_CA_BUNDLE": ssl.get_default_verify_paths().openssl_cafile},
        {
            "STOCKSYNC_MARKET_VERIFY": "false",
            "STOCKSYNC_MARKET_VERIFY_SSL": "0",
            "STOCKSYNC_MARKET_INSECURE": "true",
            "STOCKSYNC_SSL_VERIFY": "false",
        },
    ],
    ids=["plain", "requests-empty", "curl-empty", "both-empty", "curl-system-ca", "stocksync"],
)
def test_an_untrusted_certificate_is_refused_and_nothing_is_sent(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]
) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", SECRET_KEY)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with https_market(*self_signed) as (url, state):
        answer = market_client(url).put_stocks(1001, stocks_body())
        assert (answer.status, answer.failure) == (
            0,
            "SSLError on PUT /v2/campaigns/1001/offers/stocks",
        )
        assert state.requests() == []


def test_a_ca_bundle_path_that_does_not_exist_sends_nothing(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", SECRET_KEY)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with https_market(*self_signed) as (url, state):
        try:
            status: int | None = market_client(url).put_stocks(1001, stocks_body()).status
        except OSError:  # requests refuses the path before it connects
            status = None
        assert status in (0, None)
        assert state.requests() == []


def test_a_ca_bundle_that_holds_the_certificate_is_honoured(
    self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: the same server, trusted through REQUESTS_CA_BUNDLE (a
    CA path, which is fine), answers; so the refusals above are verification at work."""
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", SECRET_KEY)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(self_signed[0]))
    with https_market(*self_signed) as (url, state):
        answer = market_client(url).put_stocks(1001, stocks_body())
        assert answer.status == 200
        assert len(state.requests()) == 1


def test_a_worker_records_a_tls_failure_as_status_0_and_keeps_the_changes(
    self_signed: tuple[Path, Path],
    engine: Engine,
    database_url: str,
    rabbit_url: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    with https_market(*self_signed) as (url, state):
        env = service_env(
            database_url,
            rabbit_url,
            STOCKSYNC_MARKET_BASE_URL=url,
            STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
            STOCKSYNC_DRAIN_INTERVAL_SECONDS="0.5",
            STOCKSYNC_PUSH_MAX_RETRIES="0",
        )
        # A CA bundle in the environment would make requests verify even if the client did not
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            env.pop(name, None)
        worker = WorkerProcess(env, log, extra_args=("-B", "-s", str(tmp_path / "beat")))
        worker.start()
        try:
            producer = Celery(broker=rabbit_url)
            changes = [{"campaign_id": 1001, "sku": "TLS", "count": 5}]
            producer.send_task("stocks.submit", kwargs={"changes": changes}, queue=CHANGES_QUEUE)
            producer.close()
            wait_for("a failed push", lambda: 0 in statuses(engine), timeout=30)
        finally:
            worker.stop()
        assert state.requests() == []
    assert set(statuses(engine)) <= {0, None}
    assert pending_keys(engine) == 1
    assert "push campaign=1001 skus=1 status=0" in log.read_text()


def statuses(engine: Engine) -> list[int | None]:
    with engine.connect() as conn:
        return [s for (s,) in conn.execute(text("SELECT status FROM market_request"))]


SQL_LOOKING_SKUS = [
    "'); DROP TABLE stock; --",
    "Robert'); DROP TABLE change_log;--",
    "' OR '1'='1",
    "a'b\"c",
    'say "hi"',
    "semi;colon; DELETE FROM rejected",
    "back\\slash\\",
    "\\x00 \\n \\'",
    "%s %(sku)s %%",
    ":sku :1 $1 ?",
    "-- comment /* block */",
    "ё-日本-😀-𝄞",
    "tab\tinside",
    '{"json": [1, 2]}',
    "<script>alert(1)</script>",
    "x" * 254 + "'",
]


def event_id(index: int, sku: str) -> str:
    return f"{sku[:240]}#{index}"


def test_skus_that_look_like_sql_are_stored_and_sent_exactly(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    tables_before = table_names(engine)
    injected_field = "'); DROP TABLE rejected; --"
    changes: list[dict[str, Any]] = [
        {"campaign_id": 1001, "sku": sku, "count": i + 1, "event_id": event_id(i, sku)}
        for i, sku in enumerate(SQL_LOOKING_SKUS)
    ]
    changes.append({"campaign_id": 1001, "sku": "ok", "count": 1, injected_field: 1})
    with MarketSandbox(api_keys=[SECRET_KEY]) as sandbox:
        with running_worker(database_url, rabbit_url, sandbox, tmp_path / "w.log"):
            producer = Celery(broker=rabbit_url)
            producer.send_task("stocks.submit", kwargs={"changes": changes}, queue=CHANGES_QUEUE)
            producer.close()
            wait_for(
                "the Market to hold every SKU",
                lambda: len(counts_at(sandbox, 1001)) == len(SQL_LOOKING_SKUS),
                timeout=60,
            )
        sent = counts_at(sandbox, 1001)
    expected = {sku: i + 1 for i, sku in enumerate(SQL_LOOKING_SKUS)}
    assert sent == expected
    with engine.connect() as conn:
        stored = {
            sku: value
            for sku, value in conn.execute(
                text("SELECT sku, value FROM stock WHERE group_id = 1001")
            )
        }
        keys = {k for (k,) in conn.execute(text("SELECT idempotency_key FROM change_log"))}
        refused = conn.execute(text("SELECT position, reason, raw FROM rejected")).all()
    assert stored == expected
    assert keys == {f"e:{event_id(i, sku)}" for i, sku in enumerate(SQL_LOOKING_SKUS)}
    assert [(p, r) for p, r, _ in refused] == [
        (len(SQL_LOOKING_SKUS), f"{injected_field}: is not a known field")
    ]
    assert json.loads(refused[0][2]) == changes[-1]
    assert table_names(engine) == tables_before


def table_names(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            name
            for (name,) in conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            )
        )
