"""HTTP side of the sandbox: the Market's stocks methods and the `/_sandbox/*` control endpoints."""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

from domain.market_rules import BODY_BYTES_MAX
from sandbox import stock_reads
from sandbox.config import ConfigError
from sandbox.rules import (
    ApiError,
    RequestRejected,
    decode_body,
    parse_campaign_id,
    settle,
    validate_skus,
)
from sandbox.state import SandboxState

if TYPE_CHECKING:
    from sandbox.config import SandboxConfig
    from sandbox.state import Faults

_STOCKS_PATH = re.compile(r"^/v2/campaigns/([^/]+)/offers/stocks/?$")
_V3_READ_PATH = re.compile(r"^/v3/businesses/([^/]+)/offers/stocks/?$")
# A body past this is not even read: the answer is 400 and the connection is closed.
_READ_CAP = 16 * BODY_BYTES_MAX
_REASONS = {420: "Method Failure"}  # http.server does not know the Market's 420
_FORCED = {
    401: ("UNAUTHORIZED", "Authorization is required for campaign {c} (forced by the sandbox)"),
    403: ("FORBIDDEN", "Access to campaign {c} is denied (forced by the sandbox)"),
    404: ("NOT_FOUND", "Campaign {c} not found (forced by the sandbox)"),
}


class SandboxHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that carries the sandbox's state to its handlers."""

    daemon_threads = True
    request_queue_size = 256  # bursts of benchmark connections must queue, not be refused

    def __init__(self, address: tuple[str, int], state: SandboxState, verbose: bool) -> None:
        super().__init__(address, SandboxHandler)
        self.state = state
        self.verbose = verbose

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up early are normal here; anything else is printed."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Drop(Exception):
    """Raised to close the connection without writing an answer."""


class _Answer(Exception):
    """Raised to end a stocks request with an error status (-Until overridden when given)."""

    def __init__(self, status: int, code: str, message: str, until: float | None = None) -> None:
        self.status = status
        self.errors: Sequence[ApiError] = [ApiError(code, message)]
        self.until = until
        super().__init__(message)

    @classmethod
    def of(cls, status: int, errors: Sequence[ApiError]) -> _Answer:
        """An answer with several errors (one per bad SKU)."""
        answer = cls(status, errors[0].code, errors[0].message)
        answer.errors = errors
        return answer


class SandboxHandler(BaseHTTPRequestHandler):
    """One connection, one request: the Market says Keep-Alive is not supported."""

    protocol_version = "HTTP/1.1"
    server_version = "MarketSandbox/1"

    @property
    def state(self) -> SandboxState:
        """The sandbox state of the server this handler serves."""
        return cast(SandboxHTTPServer, self.server).state

    def log_message(self, format: str, *args: Any) -> None:
        """Access log to stderr only when the server is verbose."""
        if cast(SandboxHTTPServer, self.server).verbose:
            super().log_message(format, *args)

    # --- plumbing -------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or None when its length is missing, invalid or past the read cap."""
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            return None
        if length < 0 or length > _READ_CAP:
            return None
        return self.rfile.read(length) if length else b""

    def _send(  # one answer per connection: the Market does not keep connections alive
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status, _REASONS.get(status))
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = True

    def _drop(self) -> None:
        """Closes the socket with no answer, as a broken network would."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may have gone already
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- routing --------------------------------------------------------------------------

    def do_PUT(self) -> None:
        """The Market method; any other PUT path is a 404."""
        self._market_or_control("PUT")

    def do_GET(self) -> None:
        """Control endpoints (`/_sandbox/...`); the Market path answers 405."""
        self._market_or_control("GET")

    def do_POST(self) -> None:
        """Control endpoints (`/_sandbox/...`) and the read methods (sandbox.stock_reads)."""
        self._market_or_control("POST")

    def do_DELETE(self) -> None:
        """Not used by the Market method: 405 there, 404 elsewhere."""
        self._market_or_control("DELETE")

    def _market_or_control(self, method: str) -> None:
        """Routes to the control endpoints, the stocks method, or a 404/405 in the Market shape."""
        url = urlsplit(self.path)
        from sandbox import accounts, v3  # they import this module

        if accounts.dispatch(self, method, url) or v3.dispatch(self, method, url):
            return
        if url.path.startswith("/_sandbox/"):
            if (method, url.path) in stock_reads.CONTROLS:  # drift, drop, lost updates, reads
                stock_reads.control(self, method, url.path, parse_qs(url.query), self._read_body())
            else:
                self._control(method, url.path, parse_qs(url.query))
            return
        match = _STOCKS_PATH.match(url.path)
        read = match or _V3_READ_PATH.match(url.path)
        if read is not None and method == "POST":  # the read methods: sandbox.stock_reads
            serve = stock_reads.serve_v2_read if match else stock_reads.serve_v3_read
            serve(self, read.group(1), parse_qs(url.query))
        elif match is not None and method == "PUT":
            self._stocks(match.group(1))
        elif read is None:
            self._read_body()
            error = ApiError("NOT_FOUND", f"No such method: {method} {url.path}")
            self._send(404, _errors(error), self.state.rate_headers(None))
        else:
            self._read_body()
            allowed = "PUT, POST" if match else "POST"
            error = ApiError("METHOD_NOT_ALLOWED", f"{method} is not allowed here; use {allowed}")
            headers = {"Allow": allowed, **self.state.rate_headers(None)}
            self._send(405, _errors(error), headers)

    # --- the Market method ----------------------------------------------------------------

    def _stocks(self, raw_campaign: str) -> None:
        """Answers (or drops) one stocks request and records it in the log and counters."""
        keys = {"campaign": parse_campaign_id(raw_campaign)}
        counters = {"skus": 0, "skus_accepted": 0, "skus_refused": 0, "skus_lost": 0}
        entry = new_entry("PUT", self.path, keys, **counters)
        self._run_logged(
            entry,
            lambda: self._stocks_checks(raw_campaign, entry),
            self.state.record,
            lambda until: self.state.rate_headers(entry["campaign"], until),
        )

    def _run_logged(
        self,
        entry: dict[str, Any],
        checks: Callable[[], None],
        record: Callable[[dict[str, Any]], None],
        headers: Callable[[float | None], dict[str, str]],
    ) -> None:
        """Runs a stock update's checks, logs the request, answers it (or drops the connection)."""
        status, errors, until = 200, cast(Sequence[ApiError], ()), None
        try:
            checks()
        except _Answer as answer:
            status, errors, until = answer.status, answer.errors, answer.until
        except _Drop:
            entry["outcome"] = entry["injected"]
            finish(entry, record)
            self._drop()
            return
        entry["status"] = status
        if status == 200:
            entry["outcome"] = "ok"
        else:
            entry["first_error"] = errors[0].message
        finish(entry, record)
        self._send(status, _errors(*errors) if errors else {"status": "OK"}, headers(until))

    def _checked_body(self, entry: dict[str, Any]) -> bytes:
        """The request body once the credentials are checked; 400 when it cannot be read."""
        raw = self._read_body()
        if raw is None:
            raise _Answer(
                400, "BAD_REQUEST", f"Content-Length missing, invalid or over {_READ_CAP}"
            )
        entry["bytes"] = len(raw)
        self._check_auth()
        return raw

    def _require_json(self) -> None:
        """400 unless the request says its body is JSON."""
        content_type = self.headers.get("Content-Type", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            message = f"Content-Type must be application/json, got {content_type!r}"
            raise _Answer(400, "UNSUPPORTED_MEDIA_TYPE", message)

    def _stocks_checks(self, raw_campaign: str, entry: dict[str, Any]) -> None:
        """Runs the request; returns for 200, raises _Answer for any other status or _Drop."""
        state = self.state
        config = state.config
        raw = self._checked_body(entry)
        campaign = check_campaign(config, entry["campaign"], raw_campaign, entry)
        admitted = state.begin(campaign)
        try:
            if not admitted:
                slots = config.max_parallel_requests
                wait = config.injected_420_wait_seconds
                raise parallel_refusal(entry, slots, f"campaignId {campaign}", wait)
            self._admitted(campaign, raw, entry)
        finally:
            state.end(campaign, admitted)

    def _admitted(self, campaign: int, raw: bytes, entry: dict[str, Any]) -> None:
        """The part of a stocks request that runs inside a parallel slot."""
        state = self.state
        faults = state.roll_faults()
        self._delay(faults.latency_seconds, entry)
        config = state.config  # read after the sleep: a test may have changed it meanwhile
        wait = config.injected_420_wait_seconds
        raise_injected(faults, entry, lambda status: _forced(status, campaign, wait))
        self._require_json()
        try:
            skus = decode_body(raw)
        except RequestRejected as rejected:
            raise _Answer.of(400, [rejected.error]) from None
        entry["skus"] = len(skus)
        reservation = state.reserve(campaign, len(skus))
        if not reservation.ok:
            limit, window = config.rate_limit_skus_per_minute, config.rate_window_seconds
            scope = f"campaignId {campaign}: {len(skus)} SKUs asked"
            raise window_refusal(
                entry, limit, window, "req.skus", scope=scope, until=reservation.until
            )

        entry["skus_refused"] = len(skus)  # until some are applied
        try:
            validated = validate_skus(skus, datetime.now(UTC), campaign)
        except RequestRejected as rejected:
            raise _Answer.of(400, [rejected.error]) from None
        updates, errors = settle(
            validated.updates, validated.errors, config.refuse_skus, config.partial_400
        )
        if updates and state.take_lost_update(campaign):  # answered as usual, never applied
            entry["skus_lost"], updates = len(updates), []
        entry["skus_accepted"] = state.apply(campaign, updates)
        entry["skus_refused"] = len(skus) - entry["skus_accepted"] - entry["skus_lost"]
        if faults.drop_after:
            entry["injected"] = "drop_after"
            raise _Drop
        if errors:
            raise _Answer.of(400, errors)

    def _delay(self, latency: float, entry: dict[str, Any]) -> None:
        """Injected latency, then a hold (`hold_requests`); _Drop when the client left meanwhile."""
        if latency:
            time.sleep(latency)
        held = self.state.take_hold()
        if held and not self._hold(held):
            entry["injected"] = "held: client gone"
            raise _Drop

    def _hold(self, seconds: float) -> bool:
        """Holds the request `seconds`, a `100 Continue` every second (a client's per-read timeout
        never fires); False as soon as the client has hung up."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(1.0, left))
            try:
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return False  # end of stream: the client closed its side
                self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                return False
        return True

    def _check_auth(self) -> None:
        """Raises 401 when credentials are missing or malformed, 403 when they are wrong."""
        config = self.state.config
        strict = bool(config.api_keys or config.oauth_tokens)
        api_key = (self.headers.get("Api-Key") or "").strip()
        if api_key:
            if api_key.lower().startswith("bearer "):
                raise _Answer(401, "UNAUTHORIZED", "Api-Key must not be prefixed with 'Bearer'")
            if strict and api_key not in config.api_keys:
                raise _Answer(403, "FORBIDDEN", "Api-Key is not valid")
            return
        authorization = (self.headers.get("Authorization") or "").strip()
        if not authorization:
            message = "Authorization is required: send Api-Key or Authorization: Bearer"
            raise _Answer(401, "UNAUTHORIZED", message)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Answer(401, "UNAUTHORIZED", "Authorization must be 'Bearer <token>'")
        if strict and token.strip() not in config.oauth_tokens:
            raise _Answer(403, "FORBIDDEN", "OAuth token is not valid")

    # --- control endpoints ----------------------------------------------------------------

    def _control(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        """The `/_sandbox/*` endpoints: inspection (GET) and configuration (POST)."""
        state = self.state
        raw = self._read_body()
        try:
            campaign = _query_int(query, "campaign")
            if (method, path) == ("GET", "/_sandbox/state"):
                if campaign is None:
                    self._send(200, {"campaigns": state.stock()})
                else:
                    self._send(200, {"campaign": campaign, "skus": state.stock(campaign)})
            elif (method, path) == ("GET", "/_sandbox/requests"):
                self._send(200, {"requests": state.requests(campaign, *since_limit(query))})
            elif (method, path) == ("GET", "/_sandbox/stats"):
                self._send(200, state.stats())
            elif (method, path) == ("GET", "/_sandbox/config"):
                self._send(200, state.config.as_json())
            elif (method, path) == ("GET", "/_sandbox/health"):
                self._send(200, {"status": "OK"})
            elif (method, path) == ("POST", "/_sandbox/config"):
                self._send(200, state.configure(control_changes(raw, "settings")).as_json())
            elif (method, path) == ("POST", "/_sandbox/reset"):
                state.reset()
                self._send(200, {"status": "OK"})
            else:
                self._no_endpoint(method, path)
        except (ConfigError, ValueError) as exc:
            self._bad_control(exc)

    def _no_endpoint(self, method: str, path: str) -> None:
        """The 404 of a control path the sandbox does not have."""
        self._send(404, _errors(ApiError("NOT_FOUND", f"No such endpoint: {method} {path}")))

    def _bad_control(self, exc: Exception) -> None:
        """The 400 of a control request with a bad field or value, naming it."""
        self._send(400, _errors(ApiError("BAD_REQUEST", str(exc))))


def new_entry(method: str, path: str, keys: Mapping[str, Any], **counters: Any) -> dict[str, Any]:
    """A request's log entry as it starts: its `keys` and `counters`, and what all methods log."""
    return {
        "method": method,
        "path": path,
        **keys,
        "status": None,
        "outcome": "error",
        **counters,
        "bytes": 0,
        "parallel_limited": False,
        "rate_limited": False,
        "injected": None,
        "first_error": None,
        "started_monotonic": time.monotonic(),
        "started_at": datetime.now(UTC).isoformat(),
    }


def finish(entry: dict[str, Any], record: Callable[[dict[str, Any]], None]) -> None:
    """Stamps the end of a request and hands its log entry to `record`."""
    entry["ended_monotonic"] = time.monotonic()
    entry["ended_at"] = datetime.now(UTC).isoformat()
    record(entry)


def check_campaign(
    config: SandboxConfig, campaign: int | None, raw_campaign: str, entry: dict[str, Any]
) -> int:
    """The campaign of a v2 request; 400 if the path's is not one, 404 or a forced status."""
    if campaign is None:
        raise _Answer(400, "BAD_REQUEST", f"campaignId must be an integer ≥ 1: {raw_campaign!r}")
    if config.known_campaigns is not None and campaign not in config.known_campaigns:
        raise _Answer(404, "NOT_FOUND", f"Campaign {campaign} not found")
    forced = config.forced_status.get(campaign)
    if forced is not None:
        entry["injected"] = "forced"
        raise _forced(forced, campaign, config.injected_420_wait_seconds)
    return campaign


def limited(entry: dict[str, Any], flag: str, message: str, until: float) -> _Answer:
    """The 420 of a limit hit; `flag` ("rate_limited" or "parallel_limited") marks the entry."""
    entry[flag] = True
    return _Answer(420, "LIMIT_EXCEEDED", message, until)


def window_refusal(
    entry: dict[str, Any],
    limit: int | None,
    window: float,
    resource: str,
    *,
    scope: str,
    until: float,
) -> _Answer:
    """The 420 of a request over a rolling window's `limit` of `resource` for `scope`."""
    message = (
        f"Hit rate limit of '{limit}' requests per '{_period(window)}' "
        f"for resource '{resource}' of {scope}"
    )
    return limited(entry, "rate_limited", message, until)


def parallel_refusal(entry: dict[str, Any], slots: int, scope: str, wait_420: float) -> _Answer:
    """The 420 of a request over the parallel limit of `scope` ("campaignId 5")."""
    message = f"Hit rate limit of {slots} parallel requests for {scope}"
    # A slot frees when any running request ends: a short wait, not the window's.
    return limited(entry, "parallel_limited", message, time.monotonic() + wait_420)


def raise_injected(
    faults: Faults, entry: dict[str, Any], answer: Callable[[int], Exception]
) -> None:
    """_Drop for an injected drop before the answer, `answer(500 or 420)` for an injected error."""
    if faults.drop_before:
        entry["injected"] = "drop_before"
        raise _Drop
    if faults.error_500 or faults.error_420:
        entry["injected"] = "500" if faults.error_500 else "420"
        raise answer(500 if faults.error_500 else 420)


def _forced(status: int, campaign: int, wait_420: float) -> _Answer:
    """The answer of a status forced by configuration or injected as a fault."""
    if status == 420:
        # The client must wait until -Until: keep that short, or one fault stalls it a minute.
        until = time.monotonic() + wait_420
        message = f"Hit rate limit for campaignId {campaign} (injected by the sandbox)"
        return _Answer(420, "LIMIT_EXCEEDED", message, until)
    code, message = _FORCED.get(
        status, ("INTERNAL_ERROR", "Internal error {s} for campaign {c} (injected by the sandbox)")
    )
    return _Answer(status, code, message.format(c=campaign, s=status))


def _errors(*errors: ApiError) -> dict[str, Any]:
    return {"status": "ERROR", "errors": [e.as_json() for e in errors]}


def _period(seconds: float) -> str:
    return "1 minute" if seconds == 60 else f"{seconds:g} seconds"


def control_changes(raw: bytes | None, what: str) -> dict[str, Any]:
    """The JSON object of a control POST (no body: {}); ConfigError naming `what` otherwise."""
    changes = json.loads(raw or b"{}")
    if not isinstance(changes, dict):
        raise ConfigError(f"a JSON object of {what} expected")
    return changes


def since_limit(query: Mapping[str, list[str]]) -> tuple[int, int | None]:
    """The `since` (default 0) and `limit` query parameters of a request-log endpoint."""
    return _query_int(query, "since") or 0, _query_int(query, "limit")


def _query_int(query: Mapping[str, list[str]], name: str) -> int | None:
    values = query.get(name)
    if not values:
        return None
    try:
        return int(values[0])
    except ValueError:
        raise ValueError(f"query parameter {name!r} must be an integer") from None
