"""The Market HTTP edge: `PUT /v2/campaigns/{id}/offers/stocks` and `POST
/v3/businesses/{id}/offers/stocks/update`, answers parsed, secrets kept out.

The credential lives only in the session's headers; nothing here logs headers, and exceptions are
rebuilt from the URL path and the exception's class so no header can leak through them.
"""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass, field
from datetime import datetime

import requests
from pydantic import SecretStr


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


def _date_header(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


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
        self.session = requests.Session()
        self.session.verify = True  # never switched off: there is no setting for it
        self.session.headers["Content-Type"] = "application/json"
        if api_key is not None:
            self.session.headers["Api-Key"] = api_key.get_secret_value()
        elif oauth_token is not None:
            self.session.headers["Authorization"] = f"Bearer {oauth_token.get_secret_value()}"

    def put_stocks(self, campaign_id: int, body: bytes) -> MarketAnswer:
        """One PUT; any answer or failure comes back as a `MarketAnswer`, never an exception."""
        return self._send("PUT", f"/v2/campaigns/{campaign_id}/offers/stocks", body)

    def update_v3_stocks(self, business_id: int, body: bytes) -> MarketAnswer:
        """One v3 update of a business's partner warehouses; answers as `put_stocks`."""
        return self._send("POST", f"/v3/businesses/{business_id}/offers/stocks/update", body)

    def _send(self, method: str, path: str, body: bytes) -> MarketAnswer:
        try:
            response = self.session.request(
                method, self.base_url + path, data=body, timeout=self.timeout
            )
        except (requests.RequestException, OSError) as exc:
            # The exception's text can carry the request; keep only its kind. OSError: a CA
            # bundle that cannot be read fails before anything is sent.
            return MarketAnswer(status=0, failure=f"{type(exc).__name__} on {method} {path}")
        headers = response.headers
        return MarketAnswer(
            status=response.status_code,
            errors=[] if response.ok else _errors(response.content),
            limit=_int_header(headers.get("X-RateLimit-Resource-Limit")),
            remaining=_int_header(headers.get("X-RateLimit-Resource-Remaining")),
            until=_date_header(headers.get("X-RateLimit-Resource-Until")),
        )
