"""The Market client follows no redirect: the API key never reaches another server and a 3xx
acknowledges nothing (issue 13, item 10). A real worker, two real local HTTP servers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, text

from tests.integration.broker_support import CHANGES_QUEUE, wait_for
from tests.integration.drain_support import SECRET_KEY, pending_keys
from tests.services import WorkerProcess, service_env

pytestmark = pytest.mark.slow


@contextmanager
def http_server(answer: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_a_307_to_another_server_sends_it_no_key_and_acknowledges_nothing(
    engine: Engine, database_url: str, rabbit_url: str, tmp_path: Path
) -> None:
    seen: list[dict[str, str]] = []

    class Catcher(BaseHTTPRequestHandler):
        """Another host that answers 200 to anything, recording what it was sent."""

        def do_PUT(self) -> None:
            seen.append(dict(self.headers))
            body = json.dumps({"status": "OK"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http_server(Catcher) as catcher:
        target = f"http://127.0.0.1:{catcher.server_address[1]}"

        class Redirector(BaseHTTPRequestHandler):
            """The Market's address answering 307 to the other host."""

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(307)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        with http_server(Redirector) as redirector:
            env = service_env(
                database_url,
                rabbit_url,
                STOCKSYNC_MARKET_BASE_URL=f"http://127.0.0.1:{redirector.server_address[1]}",
                STOCKSYNC_MARKET_API_KEY=SECRET_KEY,
                STOCKSYNC_DRAIN_INTERVAL_SECONDS="0.5",
                STOCKSYNC_PUSH_MAX_RETRIES="1",
            )
            log = tmp_path / "worker.log"
            worker = WorkerProcess(env, log, extra_args=("-B", "-s", str(tmp_path / "beat")))
            worker.start()
            try:
                producer = Celery(broker=rabbit_url)
                changes = [{"campaign_id": 1001, "sku": "REDIRECTED", "count": 5}]
                producer.send_task(
                    "stocks.submit", kwargs={"changes": changes}, queue=CHANGES_QUEUE
                )
                producer.close()
                # When the Market's address answers 307 to another server, more than once
                wait_for(
                    "three answered requests (or a request at the other server)",
                    lambda: _answered(engine) >= 3 or bool(seen),
                    60,
                )
            finally:
                worker.stop()
    # Then the other server never saw a request (nor the key), and the key is still pending
    assert seen == []
    assert pending_keys(engine) == 1
    assert SECRET_KEY not in log.read_text()


def _answered(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM market_request WHERE status IS NOT NULL")
            ).scalar_one()
        )
