"""The sandbox's accounts (businesses, campaigns, warehouses, groups) and the Market's read methods.

Accounts JSON (the `--accounts` file, `MarketSandbox(accounts=...)`, `POST /_sandbox/accounts`):

    {"businesses": [
      {"id": 901, "name": "Shop",
       "campaigns": [
         {"id": 4001, "placementType": "FBS", "apiAvailability": "AVAILABLE", "domain": "shop.ru",
          "warehouses": [{"id": 7001, "name": "Main", "express": false}]}],
       "groups": [{"id": 55, "name": "North", "warehouses": [7001]}]}]}

Everything but the ids is optional (placementType FBS, apiAvailability AVAILABLE, names derived).
Campaign and warehouse ids are unique across the sandbox; a warehouse is in at most one group.
No accounts (the default): `GET /v2/campaigns` lists nothing; the v2 PUT accepts any campaign as
before, and v3 accepts any warehouse of a business the sandbox does not know.

Methods (shapes as the official OpenAPI, `yandex-market/yandex-market-partner-api`):
- `GET /v2/campaigns?pageToken|page_token=&limit=1..100` (getCampaigns, 1,000 calls an hour):
  `{"campaigns": [{id, domain, business{id,name}, placementType, apiAvailability}],
    "pager": {total, from, to, currentPage, pagesCount, pageSize}, "paging": {nextPageToken?}}`
- `POST /v2/businesses/{businessId}/warehouses?pageToken=&limit=1..30` (getPagedWarehouses, body
  `{campaignIds?: [1..25]}`, 100 calls an hour per business): `{"status": "OK", "result":
  {"warehouses": [{id, name, campaignId, express, groupInfo?{id,name}}], "paging": {...}}}`
- `POST /v3/businesses/{businessId}/warehouses?pageToken=&limit=1..30` (getPartnerWarehouses, body
  `{warehouseIds?: [...]}`, 100 calls an hour per business): warehouses not in a group of FBS/DBS
  campaigns, `{"status": "OK", "result": {"warehouses": [{id, name, models: [{placementType,
  apiAvailability}]}], "paging": {...}}}`
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qs

from sandbox.config import ConfigError
from sandbox.state import UNLIMITED_HEADER_VALUE, RollingWindow, http_date

if TYPE_CHECKING:
    from sandbox.handler import SandboxHandler

PLACEMENT_TYPES = ("FBS", "FBY", "DBS", "LAAS")
API_AVAILABILITY = (
    "AVAILABLE",
    "DISABLED_BY_INACTIVITY",
    "DISABLED_BY_NO_ACTIVE_CONTRACT",
    "MANUALLY_DISABLED",
    "DISABLED_BY_NO_PLACEMENT_TYPE",
)
CAMPAIGNS_PAGE_MAX = 100
WAREHOUSES_PAGE_MAX = 30
WAREHOUSES_PAGE_DEFAULT = 15  # PageLimit30's default
CAMPAIGN_IDS_MAX = 25
# Resource names of the read methods' hourly windows.
CAMPAIGNS = "getCampaigns"
PAGED_WAREHOUSES = "getPagedWarehouses"
PARTNER_WAREHOUSES = "getPartnerWarehouses"


@dataclass(frozen=True, slots=True)
class Warehouse:
    """A partner warehouse of a campaign; `group` is (id, name) when it is in a group."""

    id: int
    name: str
    campaign_id: int
    express: bool
    group: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Campaign:
    """A store of a business, as getCampaigns lists it."""

    id: int
    business_id: int
    domain: str
    placement_type: str
    api_availability: str


@dataclass(frozen=True, slots=True)
class Business:
    """A business (cabinet) with its campaigns and warehouses in configuration order."""

    id: int
    name: str
    campaigns: tuple[Campaign, ...]
    warehouses: tuple[Warehouse, ...]
    groups: tuple[tuple[int, str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Accounts:
    """The sandbox's businesses, immutable; `merged` makes a new book."""

    businesses: Mapping[int, Business] = field(default_factory=dict)

    def campaigns(self) -> list[Campaign]:
        """Every campaign, business by business, in configuration order."""
        return [c for b in self.businesses.values() for c in b.campaigns]

    def warehouse_ids(self, business_id: int) -> frozenset[int] | None:
        """The business's warehouse ids; None when the sandbox does not know the business."""
        business = self.businesses.get(business_id)
        return None if business is None else frozenset(w.id for w in business.warehouses)

    def campaign_warehouse(self, campaign_id: int) -> int | None:
        """The first warehouse listed with this `campaignId`; None when no account lists one."""
        for business in self.businesses.values():
            for warehouse in business.warehouses:
                if warehouse.campaign_id == campaign_id:
                    return warehouse.id
        return None

    def merged(self, other: Accounts) -> Accounts:
        """This book with `other`'s businesses added (a business with the same id is replaced)."""
        combined = {**self.businesses, **other.businesses}
        return parse_accounts({"businesses": [business_json(b) for b in combined.values()]})

    def as_json(self) -> dict[str, Any]:
        """The book in the configuration's JSON shape (defaults written out)."""
        return {"businesses": [business_json(b) for b in self.businesses.values()]}


def business_json(business: Business) -> dict[str, Any]:
    """One business in the configuration's JSON shape."""
    return {
        "id": business.id,
        "name": business.name,
        "campaigns": [
            {
                "id": c.id,
                "domain": c.domain,
                "placementType": c.placement_type,
                "apiAvailability": c.api_availability,
                "warehouses": [
                    {"id": w.id, "name": w.name, "express": w.express}
                    for w in business.warehouses
                    if w.campaign_id == c.id
                ],
            }
            for c in business.campaigns
        ],
        "groups": [
            {"id": gid, "name": name, "warehouses": list(ids)} for gid, name, ids in business.groups
        ],
    }


def _id(raw: object, where: str) -> int:
    if type(raw) is not int or raw < 1:
        raise ConfigError(f"{where}: an integer id ≥ 1 expected, got {raw!r}")
    return raw


def _text(raw: object, where: str, default: str) -> str:
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: a string expected, got {raw!r}")
    return raw


def _choice(raw: object, where: str, allowed: Sequence[str]) -> str:
    if raw is None:
        return allowed[0]
    if raw not in allowed:
        raise ConfigError(f"{where}: one of {list(allowed)} expected, got {raw!r}")
    return str(raw)


def _objects(raw: object, where: str) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(x, Mapping) for x in raw):
        raise ConfigError(f"{where}: a list of objects expected, got {raw!r}")
    return raw


def _known(obj: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = set(obj) - allowed
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(f"{where}: unknown field {name!r}; known: {sorted(allowed)}")


def parse_accounts(raw: object) -> Accounts:  # noqa: PLR0912 - one check per rule, each named
    """The book of a configuration JSON; ConfigError names the bad field and the rule."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"accounts: an object {{'businesses': [...]}} expected, got {raw!r}")
    _known(raw, "accounts", {"businesses"})
    businesses: dict[int, Business] = {}
    campaign_owner: dict[int, int] = {}
    warehouse_owner: dict[int, int] = {}
    for bi, b in enumerate(_objects(raw.get("businesses"), "businesses")):
        where = f"businesses[{bi}]"
        _known(b, where, {"id", "name", "campaigns", "groups"})
        bid = _id(b.get("id"), f"{where}.id")
        if bid in businesses:
            raise ConfigError(f"{where}.id: business {bid} is listed twice")
        campaigns: list[Campaign] = []
        warehouses: dict[int, Warehouse] = {}
        for ci, c in enumerate(_objects(b.get("campaigns"), f"{where}.campaigns")):
            cwhere = f"{where}.campaigns[{ci}]"
            _known(c, cwhere, {"id", "domain", "placementType", "apiAvailability", "warehouses"})
            cid = _id(c.get("id"), f"{cwhere}.id")
            if cid in campaign_owner:
                raise ConfigError(f"{cwhere}.id: campaign {cid} is listed twice")
            campaign_owner[cid] = bid
            campaigns.append(
                Campaign(
                    id=cid,
                    business_id=bid,
                    domain=_text(c.get("domain"), f"{cwhere}.domain", f"campaign-{cid}"),
                    placement_type=_choice(
                        c.get("placementType"), f"{cwhere}.placementType", PLACEMENT_TYPES
                    ),
                    api_availability=_choice(
                        c.get("apiAvailability"), f"{cwhere}.apiAvailability", API_AVAILABILITY
                    ),
                )
            )
            for wi, w in enumerate(_objects(c.get("warehouses"), f"{cwhere}.warehouses")):
                wwhere = f"{cwhere}.warehouses[{wi}]"
                _known(w, wwhere, {"id", "name", "express"})
                wid = _id(w.get("id"), f"{wwhere}.id")
                if wid in warehouse_owner:
                    raise ConfigError(f"{wwhere}.id: warehouse {wid} is listed twice")
                warehouse_owner[wid] = bid
                express = w.get("express", False)
                if not isinstance(express, bool):
                    raise ConfigError(f"{wwhere}.express: true or false expected, got {express!r}")
                name = _text(w.get("name"), f"{wwhere}.name", f"warehouse-{wid}")
                warehouses[wid] = Warehouse(wid, name, cid, express)
        groups: list[tuple[int, str, tuple[int, ...]]] = []
        for gi, g in enumerate(_objects(b.get("groups"), f"{where}.groups")):
            gwhere = f"{where}.groups[{gi}]"
            _known(g, gwhere, {"id", "name", "warehouses"})
            gid = _id(g.get("id"), f"{gwhere}.id")
            if any(gid == other for other, _, _ in groups):
                raise ConfigError(f"{gwhere}.id: group {gid} is listed twice")
            name = _text(g.get("name"), f"{gwhere}.name", f"group-{gid}")
            members = g.get("warehouses")
            if not isinstance(members, list) or not members:
                raise ConfigError(f"{gwhere}.warehouses: a non-empty list of ids expected")
            for wid in members:
                _id(wid, f"{gwhere}.warehouses")
                if wid not in warehouses:
                    raise ConfigError(
                        f"{gwhere}.warehouses: warehouse {wid} is not a warehouse of business {bid}"
                    )
                if warehouses[wid].group is not None:
                    raise ConfigError(f"{gwhere}.warehouses: warehouse {wid} is in two groups")
                warehouses[wid] = replace(warehouses[wid], group=(gid, name))
            groups.append((gid, name, tuple(members)))
        businesses[bid] = Business(
            id=bid,
            name=_text(b.get("name"), f"{where}.name", f"business-{bid}"),
            campaigns=tuple(campaigns),
            warehouses=tuple(warehouses.values()),
            groups=tuple(groups),
        )
    return Accounts(businesses)


def load_accounts_file(path: str) -> Accounts:
    """The book in a JSON file (`stocksync sandbox --accounts FILE`); ConfigError when bad."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--accounts {path}: {exc}") from None
    return parse_accounts(raw)


# --- paging -----------------------------------------------------------------------------------


class PageError(ValueError):
    """A paging parameter the Market would refuse (400)."""


def encode_token(offset: int) -> str:
    """An opaque nextPageToken for the item at `offset`."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The offset of a nextPageToken; PageError for one the sandbox did not make."""
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        offset = value["o"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise PageError(f"pageToken {token!r} is not valid") from None
    if type(offset) is not int or offset < 0:
        raise PageError(f"pageToken {token!r} is not valid")
    return offset


def page_params(query: Mapping[str, list[str]], maximum: int, default: int) -> tuple[int, int]:
    """(offset, limit) of `pageToken`/`page_token` and `limit`; PageError names a bad one."""
    token = (query.get("pageToken") or query.get("page_token") or [""])[0]
    offset = decode_token(token) if token else 0
    raw_limit = (query.get("limit") or [""])[0]
    if not raw_limit:
        return offset, default
    try:
        limit = int(raw_limit)
    except ValueError:
        raise PageError(f"limit must be an integer 1 … {maximum}, got {raw_limit!r}") from None
    if not 1 <= limit <= maximum:
        raise PageError(f"limit must be an integer 1 … {maximum}, got {limit}")
    return offset, limit


def page(items: Sequence[Any], offset: int, limit: int) -> tuple[list[Any], dict[str, str]]:
    """The items of one page and its `paging` object (nextPageToken only when more remain)."""
    chunk = list(items[offset : offset + limit])
    paging = {"nextPageToken": encode_token(offset + limit)} if offset + limit < len(items) else {}
    return chunk, paging


# --- answers ----------------------------------------------------------------------------------


def campaigns_answer(accounts: Accounts, offset: int, limit: int) -> dict[str, Any]:
    """getCampaigns' body for one page."""
    every = accounts.campaigns()
    chunk, paging = page(every, offset, limit)
    names = {b.id: b.name for b in accounts.businesses.values()}
    pages = max(1, -(-len(every) // limit))
    return {
        "campaigns": [
            {
                "id": c.id,
                "domain": c.domain,
                "business": {"id": c.business_id, "name": names[c.business_id]},
                "placementType": c.placement_type,
                "apiAvailability": c.api_availability,
            }
            for c in chunk
        ],
        "pager": {
            "total": len(every),
            "from": offset + 1 if chunk else 0,
            "to": offset + len(chunk),
            "currentPage": offset // limit + 1,
            "pagesCount": pages,
            "pageSize": limit,
        },
        "paging": paging,
    }


def _id_list(body: Mapping[str, Any], name: str, maximum: int | None) -> list[int] | None:
    raw = body.get(name)
    if raw is None:
        return None
    size = "" if maximum is None else f" … {maximum}"
    if not isinstance(raw, list) or not 1 <= len(raw) <= (maximum or len(raw) or 1):
        raise PageError(f"{name} must be a list of 1{size} ids, got {raw!r}")
    if not all(type(x) is int and x >= 1 for x in raw):
        raise PageError(f"{name} must hold integer ids ≥ 1, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise PageError(f"{name} must not repeat an id, got {raw!r}")
    return raw


def request_body(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    """The JSON object of an optional body; PageError for anything else or an unknown field."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PageError(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PageError("Request body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise PageError(f"Unknown field '{sorted(unknown)[0]}' in request")
    return body


def _chosen_page(
    every: list[Warehouse],
    wanted: list[int] | None,
    id_of: Callable[[Warehouse], int],
    offset: int,
    limit: int,
) -> tuple[list[Warehouse], dict[str, str]]:
    """One page of the warehouses whose `id_of` is `wanted` (None: all)."""
    if wanted is not None:
        chosen = set(wanted)
        every = [w for w in every if id_of(w) in chosen]
    return page(every, offset, limit)


def paged_warehouses_answer(
    business: Business | None, body: Mapping[str, Any], offset: int, limit: int
) -> dict[str, Any]:
    """getPagedWarehouses' body (v2): every warehouse, `groupInfo` for those in a group."""
    campaign_ids = _id_list(body, "campaignIds", CAMPAIGN_IDS_MAX)
    every = list(business.warehouses) if business else []
    chunk, paging = _chosen_page(every, campaign_ids, lambda w: w.campaign_id, offset, limit)
    warehouses = []
    for w in chunk:
        item: dict[str, Any] = {
            "id": w.id,
            "name": w.name,
            "campaignId": w.campaign_id,
            "express": w.express,
        }
        if w.group is not None:
            item["groupInfo"] = {"id": w.group[0], "name": w.group[1]}
        warehouses.append(item)
    return {"status": "OK", "result": {"warehouses": warehouses, "paging": paging}}


def partner_warehouses_answer(
    business: Business | None, body: Mapping[str, Any], offset: int, limit: int
) -> dict[str, Any]:
    """getPartnerWarehouses' body (v3): warehouses of FBS/DBS campaigns that are in no group."""
    warehouse_ids = _id_list(body, "warehouseIds", None)
    campaigns = {c.id: c for c in business.campaigns} if business else {}
    every = [
        w
        for w in (business.warehouses if business else ())
        if w.group is None and campaigns[w.campaign_id].placement_type in ("FBS", "DBS")
    ]
    chunk, paging = _chosen_page(every, warehouse_ids, lambda w: w.id, offset, limit)
    warehouses = []
    for w in chunk:
        campaign = campaigns[w.campaign_id]
        models = [campaign.placement_type] + (["EXPRESS"] if w.express else [])
        warehouses.append(
            {
                "id": w.id,
                "name": w.name,
                "models": [
                    {"placementType": m, "apiAvailability": campaign.api_availability}
                    for m in models
                ],
            }
        )
    return {"status": "OK", "result": {"warehouses": warehouses, "paging": paging}}


# --- state: the book and the read methods' hourly windows --------------------------------------


@dataclass(frozen=True)
class ReadLimits:
    """Calls per window of each read method (None: unlimited) and the window's length."""

    campaigns_calls: int | None = 1000
    paged_warehouses_calls: int | None = 100
    partner_warehouses_calls: int | None = 100
    # The Market's window is an hour; tests shorten it.
    window_seconds: float = 3600.0

    def updated(self, changes: Mapping[str, Any]) -> ReadLimits:
        """A copy with `changes` applied; ConfigError names a bad one."""
        values: dict[str, Any] = {}
        for name, raw in changes.items():
            if name == "window_seconds":
                if type(raw) not in (int, float) or raw <= 0:
                    raise ConfigError(f"read limit 'window_seconds': a number > 0, got {raw!r}")
                values[name] = float(raw)
            elif name in ("campaigns_calls", "paged_warehouses_calls", "partner_warehouses_calls"):
                if raw is not None and (type(raw) is not int or raw < 1):
                    raise ConfigError(f"read limit {name!r}: null or an integer ≥ 1, got {raw!r}")
                values[name] = raw
            else:
                raise ConfigError(f"unknown read limit {name!r}")
        return replace(self, **values)

    def limit_of(self, resource: str) -> int | None:
        """The calls allowed per window for a resource name."""
        return {
            CAMPAIGNS: self.campaigns_calls,
            PAGED_WAREHOUSES: self.paged_warehouses_calls,
            PARTNER_WAREHOUSES: self.partner_warehouses_calls,
        }[resource]

    def as_json(self) -> dict[str, Any]:
        """The limits as JSON."""
        return {
            "campaigns_calls": self.campaigns_calls,
            "paged_warehouses_calls": self.paged_warehouses_calls,
            "partner_warehouses_calls": self.partner_warehouses_calls,
            "window_seconds": self.window_seconds,
        }


@dataclass(frozen=True, slots=True)
class CallVerdict:
    """A read call's place in its window: admitted or not, and the header values."""

    ok: bool
    limit: int | None
    remaining: int
    until: float


class AccountsState:
    """The book in force and the read methods' call windows; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accounts = Accounts()
        self.limits = ReadLimits()
        self._windows: dict[tuple[str, int], RollingWindow] = defaultdict(RollingWindow)
        self.calls: dict[str, int] = defaultdict(int)

    def replace(self, accounts: Accounts) -> None:
        """Puts a new book in force."""
        with self._lock:
            self.accounts = accounts

    def add(self, accounts: Accounts) -> Accounts:
        """Adds businesses (same id: replaced); returns the book now in force."""
        with self._lock:
            self.accounts = self.accounts.merged(accounts)
            return self.accounts

    def configure(self, changes: Mapping[str, Any]) -> ReadLimits:
        """Applies a partial update of the read limits."""
        with self._lock:
            self.limits = self.limits.updated(changes)
            return self.limits

    def reset(self) -> None:
        """Forgets the call windows and counters (the book and limits stay)."""
        with self._lock:
            self._windows.clear()
            self.calls.clear()

    def call(self, resource: str, scope: int) -> CallVerdict:
        """Counts one call of `resource` for `scope` (business, or 0) if it fits its window."""
        now = time.monotonic()
        with self._lock:
            limit, window_seconds = self.limits.limit_of(resource), self.limits.window_seconds
            window = self._windows[(resource, scope)]
            window.purge(now, window_seconds)
            if limit is not None and window.total + 1 > limit:
                until = window.time_until_free(now, window_seconds, window.total + 1 - limit)
                return CallVerdict(False, limit, 0, until)
            window.add(now, 1)
            self.calls[resource] += 1
            remaining = 0 if limit is None else limit - window.total
            return CallVerdict(True, limit, remaining, window.oldest_leaves(now, window_seconds))


# --- HTTP: the read methods and `/_sandbox/accounts` -------------------------------------------

_CAMPAIGNS_PATH = re.compile(r"^/v2/campaigns/?$")
_WAREHOUSES_PATH = re.compile(r"^/(v2|v3)/businesses/([^/]+)/warehouses/?$")


def limit_headers(verdict: CallVerdict) -> dict[str, str]:
    """X-RateLimit-Resource-* of a read call's window."""
    limit = UNLIMITED_HEADER_VALUE if verdict.limit is None else verdict.limit
    remaining = UNLIMITED_HEADER_VALUE if verdict.limit is None else verdict.remaining
    return {
        "X-RateLimit-Resource-Limit": str(limit),
        "X-RateLimit-Resource-Remaining": str(remaining),
        "X-RateLimit-Resource-Until": http_date(verdict.until),
    }


def dispatch(handler: SandboxHandler, method: str, url: SplitResult) -> bool:
    """Answers the read methods and `/_sandbox/accounts*`; False when the path is not theirs."""
    if url.path.startswith("/_sandbox/accounts"):
        _control(handler, method, url.path)
        return True
    if _CAMPAIGNS_PATH.match(url.path):
        _read_method(
            handler, method, expected="GET", resource=CAMPAIGNS, raw_business=None, url=url
        )
        return True
    match = _WAREHOUSES_PATH.match(url.path)
    if match:
        resource = PAGED_WAREHOUSES if match.group(1) == "v2" else PARTNER_WAREHOUSES
        _read_method(
            handler,
            method,
            expected="POST",
            resource=resource,
            raw_business=match.group(2),
            url=url,
        )
        return True
    return False


def _read_method(
    handler: SandboxHandler,
    method: str,
    *,
    expected: str,
    resource: str,
    raw_business: str | None,
    url: SplitResult,
) -> None:
    """One read call: auth, business id, faults, the hourly window, then the page."""
    from sandbox.handler import _Answer, _Drop, _errors
    from sandbox.rules import parse_campaign_id
    from sandbox.v3 import injected_answer

    state = handler.state
    books = state.accounts
    raw = handler._read_body()
    headers: dict[str, str] = {}
    try:
        if method != expected:
            headers["Allow"] = expected
            message = f"{method} is not allowed here; use {expected}"
            raise _Answer(405, "METHOD_NOT_ALLOWED", message)
        if raw is None:
            raise _Answer(400, "BAD_REQUEST", "Content-Length missing or invalid")
        handler._check_auth()
        scope = 0
        if raw_business is not None:
            business_id = parse_campaign_id(raw_business)
            if business_id is None:
                raise _Answer(
                    400, "BAD_REQUEST", f"businessId must be an integer ≥ 1: {raw_business!r}"
                )
            scope = business_id
        faults = state.roll_faults()
        if faults.latency_seconds:
            time.sleep(faults.latency_seconds)
        if faults.drop_before:
            raise _Drop
        if faults.error_500 or faults.error_420:
            raise injected_answer(faults.error_500, scope, state.config.injected_420_wait_seconds)
        verdict = books.call(resource, scope)
        headers.update(limit_headers(verdict))
        if not verdict.ok:
            period = books.limits.window_seconds
            shown = "1 hour" if period == 3600 else f"{period:g} seconds"
            whose = "" if raw_business is None else f" of businessId {scope}"
            message = (
                f"Hit rate limit of '{verdict.limit}' requests per '{shown}' "
                f"for resource '{resource}'{whose}"
            )
            raise _Answer(420, "LIMIT_EXCEEDED", message, verdict.until)
        try:
            body = read_answer(books.accounts, resource, scope, raw, parse_qs(url.query))
        except PageError as exc:
            raise _Answer(400, "BAD_REQUEST", str(exc)) from None
    except _Drop:
        handler._drop()
        return
    except _Answer as answer:
        if answer.until is not None:
            headers["X-RateLimit-Resource-Until"] = http_date(answer.until)
        handler._send(answer.status, _errors(*answer.errors), headers)
        return
    handler._send(200, body, headers)


def read_answer(
    accounts: Accounts, resource: str, business_id: int, raw: bytes, query: Mapping[str, list[str]]
) -> dict[str, Any]:
    """The 200 body of a read method's call; PageError for a bad parameter."""
    if resource == CAMPAIGNS:
        offset, limit = page_params(query, CAMPAIGNS_PAGE_MAX, CAMPAIGNS_PAGE_MAX)
        return campaigns_answer(accounts, offset, limit)
    offset, limit = page_params(query, WAREHOUSES_PAGE_MAX, WAREHOUSES_PAGE_DEFAULT)
    business = accounts.businesses.get(business_id)
    if resource == PAGED_WAREHOUSES:
        request = request_body(raw, {"campaignIds", "components"})
        return paged_warehouses_answer(business, request, offset, limit)
    request = request_body(raw, {"warehouseIds", "components"})
    return partner_warehouses_answer(business, request, offset, limit)


def _control(handler: SandboxHandler, method: str, path: str) -> None:
    """`GET|POST /_sandbox/accounts` (replace), `POST /_sandbox/accounts/add`, `…/limits`."""
    from sandbox.handler import control_changes

    books = handler.state.accounts
    raw = handler._read_body() or b""
    try:
        if (method, path) == ("GET", "/_sandbox/accounts"):
            handler._send(200, {**books.accounts.as_json(), "limits": books.limits.as_json()})
        elif (method, path) == ("POST", "/_sandbox/accounts"):
            books.replace(parse_accounts(json.loads(raw or b"{}")))
            handler._send(200, books.accounts.as_json())
        elif (method, path) == ("POST", "/_sandbox/accounts/add"):
            handler._send(200, books.add(parse_accounts(json.loads(raw or b"{}"))).as_json())
        elif (method, path) == ("GET", "/_sandbox/accounts/limits"):
            handler._send(200, books.limits.as_json())
        elif (method, path) == ("POST", "/_sandbox/accounts/limits"):
            changes = control_changes(raw, "read limits")
            handler._send(200, books.configure(changes).as_json())
        else:
            handler._no_endpoint(method, path)
    except (ConfigError, ValueError) as exc:
        handler._bad_control(exc)
