"""What the sandbox's own tests share: the key they use, one HTTP call, the Market's error texts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from sandbox.server import MarketSandbox

AUTH = {"Api-Key": "test-key"}


def now_iso(shift: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + shift).isoformat()


def call(
    sandbox: MarketSandbox,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """One request to the sandbox: `body` as JSON (or `raw` bytes as they are), with the test key
    unless `headers` replaces it."""
    if raw is None and body is not None:
        raw = json.dumps(body).encode()
    return requests.request(
        method,
        f"{sandbox.url}{path}",
        data=raw,
        params=params,
        headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)},
        timeout=10,
    )


def error_messages(response: requests.Response) -> list[str]:
    """The messages of a Market error answer."""
    body = response.json()
    assert body["status"] == "ERROR"
    return [e["message"] for e in body["errors"]]
