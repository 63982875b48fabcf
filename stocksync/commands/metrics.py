"""`stocksync metrics [--port N]`: the Prometheus endpoint of the service's own figures."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from stocksync.migrations_runner import resolve_database_url
from worker.database import make_engine
from worker.metrics import StockFigures
from worker.settings import load_settings

HELP = "serve Prometheus metrics (pending keys, pushes, 420s, parked, rejected) until stopped"
DEFAULT_PORT = 9464


def configure(parser: argparse.ArgumentParser) -> None:
    """--host and --port of the endpoint."""
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: 9464)")


def run(args: argparse.Namespace) -> int:
    """Serves /metrics until SIGINT or SIGTERM; every scrape reads PostgreSQL once."""
    settings = load_settings()
    engine = make_engine(resolve_database_url(settings))
    registry = CollectorRegistry()
    registry.register(StockFigures(engine, settings))
    server, thread = start_http_server(args.port, addr=args.host, registry=registry)
    print(f"metrics on http://{args.host}:{server.server_port}/metrics", flush=True)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stop.wait()
    server.shutdown()
    thread.join(5)
    engine.dispose()
    return 0
