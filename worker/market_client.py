"""The Market HTTP edge: `PUT /v2/campaigns/{id}/offers/stocks`, `POST
/v3/businesses/{id}/offers/stocks/update`, the discovery reads and the getStocks read of the
verify sweep; answers parsed, secrets kept out.

The credential lives only in the session's headers; nothing here logs headers, and exceptions are
rebuilt from the URL path and the exception's class so no header can leak through them.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
from pydantic import SecretStr

from domain.discovery import MarketCampaign, MarketWarehouse


@dataclass(frozen=True, slots=True)
class MarketError:
    """One entry of the Market's `errors[]`."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class MarketAnswer:
    """A Market answer (status 0 = no answer: timeout or broken connection)."""

    status: int
    errors: list[MarketError] = field(default_factory=list)
    limit: int | None = None
    remaining: int | None = None
    until: datetime | None = None
    failure: str | None = None
    # The parsed JSON body of a 200 read (None for a PUT, an error or an unreadable body).
    body: Any = None

    def reason(self) -> str:
        """A short human reason: status and the Market's messages (never a header value)."""
        if self.failure:
            return self.failure
        detail = "; ".join(f"{e.code}: {e.message}" for e in self.errors) or "no details"
        return f"HTTP {self.status}: {detail}"[:2000]


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def http_date(value: str | None) -> datetime | None:
    """An HTTP date as an aware datetime; a date without a zone (RFC 822 "-0000") is UTC."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _errors(body: bytes) -> list[MarketError]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return []
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    if not isinstance(errors, list):
        return []
    return [
        MarketError(str(e.get("code", "")), str(e.get("message", "")))
        for e in errors
        if isinstance(e, dict)
    ]


# The total deadline of the request being sent by this thread (see `_Deadline`).
_current = threading.local()


class _Deadline:
    """A hard total deadline for one request: requests' timeouts are per phase (a server that
    trickles bytes, or a slow DNS answer, has none), so at the deadline the socket is shut down,
    and a connection made after it sends nothing."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.fired = False
        self._timer: threading.Timer | None = None

    def attach(self, sock: socket.socket) -> None:
        left = self.at - time.monotonic()
        if left <= 0:
            self.fired = True
            raise TimeoutError("total deadline passed before sending")
        self._timer = threading.Timer(left, self._cut, (sock,))
        self._timer.daemon = True
        self._timer.start()

    def _cut(self, sock: socket.socket) -> None:
        self.fired = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _WatchedConnection:
    """Mixed into urllib3's connections: a new connection joins its thread's deadline."""

    sock: socket.socket

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.attach(self.sock)


class _HTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class MarketClient:
    """Sends stock bodies to the Market; one per process (a session is not shared across forks)."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | None,
        oauth_token: SecretStr | None,
        timeout_seconds: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (timeout_seconds, timeout_seconds)
        # A PUT's whole request, connect to last byte, ends within this (`put_stocks`).
        self.total_seconds = timeout_seconds
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter()
        adapter.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        # The Market keeps no connection alive: each request connects, so each has its deadline.
        self.session.headers["Connection"] = "close"
        self.session.verify = True  # never switched off: there is no setting for it
        self.session.headers["Content-Type"] = "application/json"
        if api_key is not None:
            self.session.headers["Api-Key"] = api_key.get_secret_value()
        elif oauth_token is not None:
            self.session.headers["Authorization"] = f"Bearer {oauth_token.get_secret_value()}"

    def put_stocks(self, campaign_id: int, body: bytes) -> MarketAnswer:
        """One PUT within `total_seconds` from start to answer; any answer or failure comes back
        as a `MarketAnswer`, never an exception."""
        return self._send("PUT", f"/v2/campaigns/{campaign_id}/offers/stocks", body)

    def update_v3_stocks(self, business_id: int, body: bytes) -> MarketAnswer:
        """One v3 update of a business's partner warehouses within the same total deadline;
        answers as `put_stocks`."""
        return self._send("POST", f"/v3/businesses/{business_id}/offers/stocks/update", body)

    def _send(self, method: str, path: str, body: bytes) -> MarketAnswer:
        deadline = _current.deadline = _Deadline(self.total_seconds)
        try:
            # No redirect is followed: requests would carry Api-Key to any host it is sent to,
            # and a 200 there would acknowledge keys the Market never saw.
            response = self.session.request(
                method, self.base_url + path, data=body, timeout=self.timeout, allow_redirects=False
            )
        except (requests.RequestException, OSError) as exc:
            # The exception's text can carry the request; keep only its kind. OSError: a CA
            # bundle that cannot be read fails before anything is sent.
            if deadline.fired:
                failure = f"no answer within {self.total_seconds:g} s on {method} {path}"
            else:
                failure = f"{type(exc).__name__} on {method} {path}"
            return MarketAnswer(status=0, failure=failure)
        finally:
            deadline.cancel()
            _current.deadline = None
        return self._answer(response)

    def _post(self, path: str, payload: Any, params: dict[str, Any] | None = None) -> MarketAnswer:
        """One POST of a read method, as `put_stocks`: every outcome is a `MarketAnswer`."""
        try:
            response = self.session.post(
                self.base_url + path,
                data=json.dumps(payload, ensure_ascii=False).encode(),
                params=params,
                timeout=self.timeout,
                allow_redirects=False,  # as put_stocks: Api-Key goes to the Market only
            )
        except (requests.RequestException, OSError) as exc:
            return MarketAnswer(status=0, failure=f"{type(exc).__name__} on POST {path}")
        return self._answer(response)

    def _answer(self, response: requests.Response) -> MarketAnswer:
        headers = response.headers
        body = None
        if response.ok:
            try:
                body = response.json()
            except ValueError:
                body = None
        return MarketAnswer(
            status=response.status_code,
            errors=[] if response.ok else _errors(response.content),
            limit=_int_header(headers.get("X-RateLimit-Resource-Limit")),
            remaining=_int_header(headers.get("X-RateLimit-Resource-Remaining")),
            until=http_date(headers.get("X-RateLimit-Resource-Until")),
            body=body,
        )

    def get_stocks(self, campaign_id: int, skus: list[str]) -> MarketAnswer:
        """getStocks of up to 500 SKUs: `POST /v2/campaigns/{id}/offers/stocks {offerIds}`."""
        return self._post(f"/v2/campaigns/{campaign_id}/offers/stocks", {"offerIds": skus})

    def get_v3_stocks(self, business_id: int, warehouse_id: int, skus: list[str]) -> MarketAnswer:
        """The v3 read of up to 500 SKUs of one partner warehouse: `POST
        /v3/businesses/{id}/offers/stocks {partnerWarehouseId, offerIds}`."""
        return self._post(
            f"/v3/businesses/{business_id}/offers/stocks",
            {"partnerWarehouseId": warehouse_id, "offerIds": skus},
        )


class MarketReadError(Exception):
    """A Market read that gave no usable answer; the message says which call and why (no
    header, no secret)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


# The Market's page sizes: getCampaigns ≤ 100, getPagedWarehouses ≤ 30 with ≤ 25 campaignIds.
CAMPAIGNS_PAGE = 100
WAREHOUSES_PAGE = 30
CAMPAIGN_IDS_PER_CALL = 25
# A guard against a Market (or a proxy) that keeps handing out the same page token.
MAX_PAGES = 1000


def _field(item: object, *path: str) -> object:
    for name in path:
        item = item.get(name) if isinstance(item, dict) else None
    return item


def _int_field(item: object, where: str, *path: str) -> int:
    value = _field(item, *path)
    if type(value) is not int:
        raise MarketReadError(f"{where}: {'.'.join(path)} is not an integer: {value!r}")
    return value


class MarketReader:
    """The Market's read methods for discovery: campaigns, and warehouses with their groups."""

    def __init__(self, client: MarketClient) -> None:
        self.client = client
        # Calls made by this reader, by path template: the routing check's cost.
        self.calls: dict[str, int] = {}

    def _call(
        self, method: str, path: str, template: str, params: dict[str, str], body: object
    ) -> dict[str, object]:
        client = self.client
        self.calls[template] = self.calls.get(template, 0) + 1
        try:
            response = client.session.request(
                method,
                client.base_url + path,
                params=params,
                data=None if body is None else json.dumps(body),
                timeout=client.timeout,
                allow_redirects=False,  # as put_stocks: Api-Key goes to the Market only
            )
        except (requests.RequestException, OSError) as exc:
            raise MarketReadError(f"{type(exc).__name__} on {method} {path}") from None
        if not response.ok:
            answer = MarketAnswer(status=response.status_code, errors=_errors(response.content))
            raise MarketReadError(f"{method} {path}: {answer.reason()}", response.status_code)
        try:
            parsed = response.json()
        except ValueError:
            raise MarketReadError(f"{method} {path}: the answer is not JSON") from None
        if not isinstance(parsed, dict):
            raise MarketReadError(f"{method} {path}: the answer is not a JSON object")
        return parsed

    def _pages(
        self,
        *,
        method: str,
        path: str,
        template: str,
        limit: int,
        body: object,
        items: tuple[str, ...],
    ) -> list[object]:
        """Every item of a paged read, following `paging.nextPageToken`."""
        found: list[object] = []
        token: str | None = None
        for _ in range(MAX_PAGES):
            params = {"limit": str(limit)}
            if token:
                params["pageToken"] = token
            answer = self._call(method, path, template, params, body)
            chunk = _field(answer, *items)
            if not isinstance(chunk, list):
                raise MarketReadError(f"{method} {path}: {'.'.join(items)} is not a list")
            found.extend(chunk)
            paging_at = (*items[:-1], "paging")
            next_token = _field(answer, *paging_at, "nextPageToken")
            if not isinstance(next_token, str) or not next_token or next_token == token:
                return found
            token = next_token
        raise MarketReadError(f"{method} {path}: more than {MAX_PAGES} pages")

    def campaigns(self) -> list[MarketCampaign]:
        """Every campaign of the key (`GET /v2/campaigns`, pages of 100)."""
        path = "/v2/campaigns"
        raw = self._pages(
            method="GET",
            path=path,
            template=path,
            limit=CAMPAIGNS_PAGE,
            body=None,
            items=("campaigns",),
        )
        campaigns = []
        for i, item in enumerate(raw):
            where = f"GET {path}: campaigns[{i}]"
            campaigns.append(
                MarketCampaign(
                    id=_int_field(item, where, "id"),
                    business_id=_int_field(item, where, "business", "id"),
                    placement_type=str(_field(item, "placementType") or ""),
                    api_availability=str(_field(item, "apiAvailability") or "AVAILABLE"),
                )
            )
        return campaigns

    def warehouses(self, business_id: int, campaign_ids: list[int]) -> list[MarketWarehouse]:
        """The warehouses of these campaigns of a business (`POST /v2/businesses/{id}/warehouses`,
        25 campaign ids a call, pages of 30), each with its group when it is in one."""
        path = f"/v2/businesses/{business_id}/warehouses"
        template = "/v2/businesses/{businessId}/warehouses"
        found: list[MarketWarehouse] = []
        for start in range(0, len(campaign_ids), CAMPAIGN_IDS_PER_CALL):
            body = {"campaignIds": campaign_ids[start : start + CAMPAIGN_IDS_PER_CALL]}
            items = ("result", "warehouses")
            raw = self._pages(
                method="POST",
                path=path,
                template=template,
                limit=WAREHOUSES_PAGE,
                body=body,
                items=items,
            )
            for i, item in enumerate(raw):
                where = f"POST {path}: warehouses[{i}]"
                group = _field(item, "groupInfo")
                group_id = _int_field(group, where, "id") if group is not None else None
                name = _field(group, "name")
                found.append(
                    MarketWarehouse(
                        id=_int_field(item, where, "id"),
                        campaign_id=_int_field(item, where, "campaignId"),
                        group_id=group_id,
                        group_name=name if isinstance(name, str) else None,
                    )
                )
        return found

    def read_cabinet(self) -> tuple[list[MarketCampaign], list[MarketWarehouse]]:
        """The key's campaigns and all their warehouses: 1 call per 100 campaigns, then per
        business 1 call per 25 campaigns (more only past 30 warehouses)."""
        campaigns = self.campaigns()
        by_business: dict[int, list[int]] = {}
        for c in campaigns:
            by_business.setdefault(c.business_id, []).append(c.id)
        warehouses = [
            w for business, ids in by_business.items() for w in self.warehouses(business, ids)
        ]
        return campaigns, warehouses
