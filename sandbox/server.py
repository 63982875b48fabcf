"""The local Market sandbox: `MarketSandbox` for tests and code, `main` for the command line."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import Any

from sandbox.accounts import load_accounts_file, parse_accounts
from sandbox.config import SandboxConfig
from sandbox.handler import SandboxHTTPServer
from sandbox.state import SandboxState

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class MarketSandbox:
    """A sandbox HTTP server on a background thread; `with MarketSandbox() as sb:` runs it.

    Keyword settings are those of SandboxConfig (e.g. `partial_400=True`,
    `rate_limit_skus_per_minute=None`); port 0 picks a free port, read it from `.url`.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        verbose: bool = False,
        accounts: Mapping[str, Any] | None = None,
        read_limits: Mapping[str, Any] | None = None,
        v3: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self._state = SandboxState(SandboxConfig().updated(settings))
        # accounts: the JSON of sandbox/accounts.py; read_limits: ReadLimits; v3: V3Settings.
        if accounts is not None:
            self._state.accounts.replace(parse_accounts(accounts))
        self._state.accounts.configure(read_limits or {})
        self._state.v3.configure(v3 or {})
        self._address = (host, port)
        self._verbose = verbose
        self._server: SandboxHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MarketSandbox:
        """Binds the socket and serves on a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        self._server = SandboxHTTPServer(self._address, self._state, self._verbose)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # stop() waits up to one poll interval
            name=f"market-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving and closes the listening socket (running requests end on their own)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MarketSandbox:
        """Starts the sandbox."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops the sandbox."""
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the sandbox is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL to give a client as the Market's, e.g. `http://127.0.0.1:8765`."""
        host = self._address[0] or DEFAULT_HOST
        return f"http://{host}:{self.port}"

    def stocks_url(self, campaign_id: int) -> str:
        """The full URL of the stocks method for a campaign."""
        return f"{self.url}/v2/campaigns/{campaign_id}/offers/stocks"

    @property
    def config(self) -> SandboxConfig:
        """The settings in force."""
        return self._state.config

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Partial update of settings, same names and JSON values as `POST /_sandbox/config`."""
        return self._state.configure(changes).as_json()

    def force_status(self, campaign_id: int, status: int | None) -> None:
        """Makes a campaign answer `status` (e.g. 403) until called again with None."""
        forced = dict(self._state.config.forced_status)
        if status is None:
            forced.pop(campaign_id, None)
        else:
            forced[campaign_id] = status
        self._state.configure({"forced_status": forced})

    def state(self, campaign_id: int | None = None) -> dict[str, Any]:
        """Accepted stock: {sku: {count, updatedAt, accepted_at}} of a campaign, or by campaign."""
        return self._state.stock(campaign_id)

    def requests(self, campaign_id: int | None = None, since: int = 0) -> list[dict[str, Any]]:
        """The request log (bounded to `request_log_max` entries), oldest first."""
        return self._state.requests(campaign_id, since)

    def stats(self) -> dict[str, Any]:
        """Exact counters since the last reset (same JSON as `GET /_sandbox/stats`)."""
        return self._state.stats()

    def reset(self) -> None:
        """Clears stock, rate windows, the request log and counters; settings stay."""
        self._state.reset()

    def drift(self, campaign_id: int, counts: dict[str, int]) -> int:
        """Sets counts behind the client's back (as `POST /_sandbox/drift`); returns how many."""
        return self._state.set_skus(campaign_id, counts, datetime.now(UTC))

    def drop(self, campaign_id: int, skus: list[str]) -> int:
        """Forgets SKUs of a campaign (as `POST /_sandbox/drop`); returns how many it held."""
        return self._state.drop_skus(campaign_id, skus)

    def lose_updates(self, campaign_id: int, count: int = 0, rate: float = 0.0) -> None:
        """The next `count` PUTs, then a `rate` of them, answer 200 and apply nothing."""
        self._state.lose_updates(campaign_id, count, rate)

    def read_stats(self) -> dict[str, Any]:
        """Counters of the read methods (same JSON as `GET /_sandbox/reads`)."""
        return self._state.reads.stats()

    # --- accounts and the v3 method (sandbox/accounts.py, sandbox/v3.py) ------------------------

    def set_accounts(self, accounts: Mapping[str, Any], *, add: bool = False) -> dict[str, Any]:
        """Replaces the accounts (or adds businesses, `add=True`); returns the book in force."""
        book = parse_accounts(accounts)
        if add:
            return self._state.accounts.add(book).as_json()
        self._state.accounts.replace(book)
        return book.as_json()

    def configure_read_limits(self, **changes: Any) -> dict[str, Any]:
        """Partial update of the read methods' limits (same as `POST /_sandbox/accounts/limits`)."""
        return self._state.accounts.configure(changes).as_json()

    def read_calls(self) -> dict[str, int]:
        """Admitted calls of each read method (getCampaigns, getPagedWarehouses, …) since the
        last reset."""
        return dict(self._state.accounts.calls)

    def configure_v3(self, **changes: Any) -> dict[str, Any]:
        """Partial update of the v3 limits (same as `POST /_sandbox/v3/config`)."""
        return self._state.v3.configure(changes).as_json()

    def v3_state(
        self, business_id: int | None = None, warehouse_id: int | None = None
    ) -> dict[str, Any]:
        """v3 stock as `GET /_sandbox/v3/state` gives it (see sandbox/v3.py)."""
        return self._state.v3.state_json(business_id, warehouse_id)

    def v3_requests(self, business_id: int | None = None, since: int = 0) -> list[dict[str, Any]]:
        """The v3 request log, oldest first."""
        return self._state.v3.requests(business_id, since)

    def v3_stats(self) -> dict[str, Any]:
        """Exact v3 counters per business (same JSON as `GET /_sandbox/v3/stats`)."""
        return self._state.v3.stats()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stocksync sandbox",
        description="A local server that behaves like the Market's offers/stocks methods.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0: any free one)")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument(
        "--rate-limit", type=int, metavar="SKUS", help="SKUs per campaign per minute (100000)"
    )
    limit.add_argument("--unlimited", action="store_true", help="no SKU rate limit")
    parser.add_argument(
        "--api-key", action="append", default=[], help="a valid Api-Key (repeatable)"
    )
    parser.add_argument(
        "--oauth-token", action="append", default=[], help="a valid Bearer token (repeatable)"
    )
    parser.add_argument(
        "--known-campaign", action="append", type=int, default=[], help="a campaign id that exists"
    )
    parser.add_argument(
        "--refuse-sku", action="append", default=[], help="a SKU always refused with 400"
    )
    parser.add_argument(
        "--partial-400", action="store_true", help="a 400 applies the valid SKUs of the request"
    )
    parser.add_argument("--seed", type=int, help="seed of the fault-injection generator")
    parser.add_argument("--latency-ms", type=float, help="added latency per request")
    parser.add_argument(
        "--accounts", metavar="FILE", help="JSON file of businesses, campaigns, warehouses, groups"
    )
    parser.add_argument(
        "--v3-requests-per-minute", type=int, metavar="N", help="v3 requests per business (50)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The SandboxConfig settings the command-line flags ask for (absent flags: defaults)."""
    settings: dict[str, Any] = {}
    if args.unlimited:
        settings["rate_limit_skus_per_minute"] = None
    elif args.rate_limit is not None:
        settings["rate_limit_skus_per_minute"] = args.rate_limit
    if args.api_key:
        settings["api_keys"] = args.api_key
    if args.oauth_token:
        settings["oauth_tokens"] = args.oauth_token
    if args.known_campaign:
        settings["known_campaigns"] = args.known_campaign
    if args.refuse_sku:
        settings["refuse_skus"] = args.refuse_sku
    if args.partial_400:
        settings["partial_400"] = True
    if args.seed is not None:
        settings["seed"] = args.seed
    if args.latency_ms is not None:
        settings["latency_ms"] = args.latency_ms
    return settings


def main(argv: list[str] | None = None) -> int:
    """Runs the sandbox until SIGINT or SIGTERM; prints its URL first. Returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        sandbox = MarketSandbox(
            args.host,
            args.port,
            verbose=args.verbose,
            accounts=load_accounts_file(args.accounts).as_json() if args.accounts else None,
            v3=(
                {"requests_per_minute": args.v3_requests_per_minute}
                if args.v3_requests_per_minute is not None
                else None
            ),
            **settings_from_args(args),
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Signal handlers can only be installed from the main thread; elsewhere the caller stops us.
    in_main = threading.current_thread() is threading.main_thread()
    previous = (
        {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if in_main
        else {}
    )
    try:
        with sandbox:
            print(f"Market sandbox listening on {sandbox.url}", flush=True)
            print(
                f"  PUT and POST {sandbox.url}/v2/campaigns/{{campaignId}}/offers/stocks, "
                f"POST {sandbox.url}/v3/businesses/{{businessId}}/offers/stocks; "
                f"control: {sandbox.url}/_sandbox/{{state,requests,stats,config,reset,reads,…}}",
                flush=True,
            )
            print(
                f"  POST {sandbox.url}/v3/businesses/{{businessId}}/offers/stocks/update; "
                "GET /v2/campaigns; POST /v2|v3/businesses/{businessId}/warehouses; "
                "control: /_sandbox/accounts, /_sandbox/v3/{state,requests,stats,config}",
                flush=True,
            )
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("Market sandbox stopped", flush=True)
    return 0
