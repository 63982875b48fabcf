"""The sandbox's accounts and read methods over real HTTP: campaigns, warehouses, groups, limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import MarketSandbox
from tests.integration.sandbox_support import AUTH, call, error_messages

ROOT = Path(__file__).resolve().parents[2]
MIXED = {
    "businesses": [
        {
            "id": 901,
            "name": "Grouped",
            "campaigns": [
                {"id": 1001, "domain": "a.ru", "warehouses": [{"id": 11, "name": "A"}]},
                {"id": 1002, "placementType": "DBS", "warehouses": [{"id": 12}]},
                {"id": 1003, "warehouses": [{"id": 13, "express": True}]},
            ],
            "groups": [{"id": 55, "name": "North", "warehouses": [11, 12]}],
        },
        {
            "id": 902,
            "campaigns": [
                {
                    "id": 2001,
                    "placementType": "FBY",
                    "apiAvailability": "DISABLED_BY_INACTIVITY",
                    "warehouses": [{"id": 21}],
                }
            ],
        },
    ]
}


def many_campaigns(campaigns: int, warehouses_each: int = 1) -> dict[str, Any]:
    return {
        "businesses": [
            {
                "id": 900,
                "campaigns": [
                    {
                        "id": 5000 + c,
                        "warehouses": [
                            {"id": 100_000 + c * 100 + w} for w in range(warehouses_each)
                        ],
                    }
                    for c in range(campaigns)
                ],
            }
        ]
    }


@pytest.fixture
def sandbox() -> Iterator[MarketSandbox]:
    with MarketSandbox(accounts=MIXED) as sb:
        yield sb


def campaigns(sandbox: MarketSandbox, **params: Any) -> requests.Response:
    return call(sandbox, "GET", "/v2/campaigns", params=params)


def warehouses(
    sandbox: MarketSandbox, business: int, version: str = "v2", body: Any = None, **params: Any
) -> requests.Response:
    return call(
        sandbox, "POST", f"/{version}/businesses/{business}/warehouses", body, params=params
    )


# --- GET /v2/campaigns ------------------------------------------------------------------------


def test_campaigns_list_id_business_placement_and_api_availability(
    sandbox: MarketSandbox,
) -> None:
    response = campaigns(sandbox)
    assert response.status_code == 200
    body = response.json()
    assert body["campaigns"][0] == {
        "id": 1001,
        "domain": "a.ru",
        "business": {"id": 901, "name": "Grouped"},
        "placementType": "FBS",
        "apiAvailability": "AVAILABLE",
    }
    assert [(c["id"], c["business"]["id"], c["placementType"]) for c in body["campaigns"]] == [
        (1001, 901, "FBS"),
        (1002, 901, "DBS"),
        (1003, 901, "FBS"),
        (2001, 902, "FBY"),
    ]
    assert body["campaigns"][3]["apiAvailability"] == "DISABLED_BY_INACTIVITY"
    assert body["paging"] == {}
    assert body["pager"]["total"] == 4


def test_without_accounts_no_campaigns_are_listed_and_puts_still_work() -> None:
    with MarketSandbox() as sb:
        assert campaigns(sb).json()["campaigns"] == []
        response = requests.put(
            f"{sb.url}/v2/campaigns/777/offers/stocks",
            json={"skus": [{"sku": "A", "items": [{"count": 1}]}]},
            headers=AUTH,
            timeout=10,
        )
        assert response.status_code == 200


def test_paging_walks_every_campaign_once() -> None:
    with MarketSandbox(accounts=many_campaigns(250)) as sb:
        seen: list[int] = []
        token: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 100}
            if token:
                # The Market takes both spellings of the token parameter.
                params["pageToken" if pages % 2 else "page_token"] = token
            body = campaigns(sb, **params).json()
            pages += 1
            seen += [c["id"] for c in body["campaigns"]]
            token = body["paging"].get("nextPageToken")
            if token is None:
                break
        assert pages == 3
        assert seen == [5000 + c for c in range(250)]
        last = campaigns(sb, limit=100, pageToken=body_token_for(sb, 2)).json()["pager"]
        assert last == {
            "total": 250,
            "from": 201,
            "to": 250,
            "currentPage": 3,
            "pagesCount": 3,
            "pageSize": 100,
        }


def body_token_for(sandbox: MarketSandbox, page_index: int) -> str:
    token = ""
    for _ in range(page_index):
        params = {"limit": 100, **({"pageToken": token} if token else {})}
        token = campaigns(sandbox, **params).json()["paging"]["nextPageToken"]
    return token


@pytest.mark.parametrize("limit", ["0", "101", "many"])
def test_campaigns_limit_outside_1_to_100_is_400(sandbox: MarketSandbox, limit: str) -> None:
    response = campaigns(sandbox, limit=limit)
    assert response.status_code == 400
    assert error_messages(response)[0].startswith("limit must be an integer 1 … 100")


def test_a_page_token_the_sandbox_did_not_make_is_400(sandbox: MarketSandbox) -> None:
    response = campaigns(sandbox, pageToken="not-a-token")
    assert response.status_code == 400
    assert error_messages(response) == ["pageToken 'not-a-token' is not valid"]


def test_read_methods_share_v2_fault_injection(sandbox: MarketSandbox) -> None:
    sandbox.configure(error_500_rate=1.0)
    response = warehouses(sandbox, 901)
    assert response.status_code == 500
    assert error_messages(response) == [
        "Internal error 500 for businessId 901 (injected by the sandbox)"
    ]
    sandbox.configure(error_500_rate=0.0, drop_before_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        campaigns(sandbox)


def test_campaigns_need_credentials(sandbox: MarketSandbox) -> None:
    response = requests.get(f"{sandbox.url}/v2/campaigns", timeout=10)
    assert response.status_code == 401


# --- POST /v2/businesses/{businessId}/warehouses ----------------------------------------------


def test_grouped_warehouses_carry_group_info(sandbox: MarketSandbox) -> None:
    response = warehouses(sandbox, 901)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "OK"
    assert body["result"]["warehouses"] == [
        {
            "id": 11,
            "name": "A",
            "campaignId": 1001,
            "express": False,
            "groupInfo": {"id": 55, "name": "North"},
        },
        {
            "id": 12,
            "name": "warehouse-12",
            "campaignId": 1002,
            "express": False,
            "groupInfo": {"id": 55, "name": "North"},
        },
        {"id": 13, "name": "warehouse-13", "campaignId": 1003, "express": True},
    ]


def test_campaign_ids_filter_the_warehouses(sandbox: MarketSandbox) -> None:
    body = warehouses(sandbox, 901, body={"campaignIds": [1003, 2001]}).json()
    assert [w["id"] for w in body["result"]["warehouses"]] == [13]


@pytest.mark.parametrize(
    "campaign_ids",
    [[], list(range(1, 27)), [1001, 1001], ["1001"]],
    ids=["empty", "26", "repeated", "text"],
)
def test_campaign_ids_outside_the_rules_are_400(
    sandbox: MarketSandbox, campaign_ids: list[Any]
) -> None:
    response = warehouses(sandbox, 901, body={"campaignIds": campaign_ids})
    assert response.status_code == 400
    assert "campaignIds" in error_messages(response)[0]


def test_warehouse_pages_hold_at_most_30_and_walk_all() -> None:
    with MarketSandbox(accounts=many_campaigns(7, warehouses_each=10)) as sb:
        default = warehouses(sb, 900).json()["result"]
        assert len(default["warehouses"]) == 15  # PageLimit30's default
        seen: list[int] = []
        token = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 30, **({"page_token": token} if token else {})}
            result = warehouses(sb, 900, **params).json()["result"]
            pages += 1
            assert len(result["warehouses"]) <= 30
            seen += [w["id"] for w in result["warehouses"]]
            token = result["paging"].get("nextPageToken")
            if token is None:
                break
        assert pages == 3
        assert len(seen) == len(set(seen)) == 70
        too_big = warehouses(sb, 900, limit=31)
        assert too_big.status_code == 400
        assert error_messages(too_big) == ["limit must be an integer 1 … 30, got 31"]


def test_unknown_business_has_no_warehouses(sandbox: MarketSandbox) -> None:
    body = warehouses(sandbox, 999).json()
    assert body["result"] == {"warehouses": [], "paging": {}}


def test_get_on_warehouses_is_405(sandbox: MarketSandbox) -> None:
    response = requests.get(f"{sandbox.url}/v2/businesses/901/warehouses", timeout=10)
    assert response.status_code == 405


# --- POST /v3/businesses/{businessId}/warehouses ----------------------------------------------


def test_v3_warehouses_leave_out_groups_and_campaign_ids(sandbox: MarketSandbox) -> None:
    body = warehouses(sandbox, 901, "v3").json()
    assert body["result"]["warehouses"] == [
        {
            "id": 13,
            "name": "warehouse-13",
            "models": [
                {"placementType": "FBS", "apiAvailability": "AVAILABLE"},
                {"placementType": "EXPRESS", "apiAvailability": "AVAILABLE"},
            ],
        }
    ]
    # FBY warehouses are the Market's own, not the partner's.
    assert warehouses(sandbox, 902, "v3").json()["result"]["warehouses"] == []
    refused = warehouses(sandbox, 901, "v3", body={"campaignIds": [1003]})
    assert refused.status_code == 400
    assert error_messages(refused) == ["Unknown field 'campaignIds' in request"]


# --- hourly limits ----------------------------------------------------------------------------


def test_campaigns_past_their_hourly_limit_are_420_with_headers(sandbox: MarketSandbox) -> None:
    first = campaigns(sandbox)
    assert first.headers["X-RateLimit-Resource-Limit"] == "1000"
    assert first.headers["X-RateLimit-Resource-Remaining"] == "999"
    sandbox.configure_read_limits(campaigns_calls=3, window_seconds=1.5)
    assert [campaigns(sandbox).status_code for _ in range(2)] == [200, 200]
    refused = campaigns(sandbox)
    assert refused.status_code == 420
    assert error_messages(refused) == [
        "Hit rate limit of '3' requests per '1.5 seconds' for resource 'getCampaigns'"
    ]
    assert refused.headers["X-RateLimit-Resource-Remaining"] == "0"
    until = parsedate_to_datetime(refused.headers["X-RateLimit-Resource-Until"])
    wait = (until - datetime.now(UTC)).total_seconds()
    assert 0 < wait <= 2.6
    time.sleep(wait)
    assert campaigns(sandbox).status_code == 200


def test_warehouse_limits_are_per_business_and_per_method(sandbox: MarketSandbox) -> None:
    assert warehouses(sandbox, 901).headers["X-RateLimit-Resource-Limit"] == "100"
    sandbox.configure_read_limits(paged_warehouses_calls=2)
    assert warehouses(sandbox, 901).status_code == 200
    refused = warehouses(sandbox, 901)
    assert refused.status_code == 420
    assert error_messages(refused) == [
        "Hit rate limit of '2' requests per '1 hour' for resource 'getPagedWarehouses' "
        "of businessId 901"
    ]
    assert warehouses(sandbox, 902).status_code == 200  # another business
    assert warehouses(sandbox, 901, "v3").status_code == 200  # another method
    assert campaigns(sandbox).status_code == 200


def test_reset_clears_the_read_windows_but_keeps_accounts(sandbox: MarketSandbox) -> None:
    sandbox.configure_read_limits(campaigns_calls=1)
    campaigns(sandbox)
    assert campaigns(sandbox).status_code == 420
    sandbox.reset()
    response = campaigns(sandbox)
    assert response.status_code == 200
    assert len(response.json()["campaigns"]) == 4


# --- control API ------------------------------------------------------------------------------


def test_control_api_replaces_and_adds_accounts(sandbox: MarketSandbox) -> None:
    replaced = requests.post(
        f"{sandbox.url}/_sandbox/accounts",
        json={"businesses": [{"id": 903, "campaigns": [{"id": 3001, "warehouses": [{"id": 31}]}]}]},
        timeout=10,
    )
    assert replaced.status_code == 200
    assert [c["id"] for c in campaigns(sandbox).json()["campaigns"]] == [3001]
    added = requests.post(
        f"{sandbox.url}/_sandbox/accounts/add",
        json={
            "businesses": [
                {
                    "id": 904,
                    "campaigns": [{"id": 4001, "warehouses": [{"id": 41}, {"id": 42}]}],
                    "groups": [{"id": 7, "name": "G", "warehouses": [41, 42]}],
                }
            ]
        },
        timeout=10,
    )
    assert added.status_code == 200
    assert [c["id"] for c in campaigns(sandbox).json()["campaigns"]] == [3001, 4001]
    grouped = warehouses(sandbox, 904).json()["result"]["warehouses"]
    assert {w["groupInfo"]["id"] for w in grouped} == {7}
    shown = requests.get(f"{sandbox.url}/_sandbox/accounts", timeout=10).json()
    assert [b["id"] for b in shown["businesses"]] == [903, 904]
    assert shown["limits"]["campaigns_calls"] == 1000
    # The v3 method now checks warehouses against the new book.
    v3 = requests.post(
        f"{sandbox.url}/v3/businesses/904/offers/stocks/update",
        json={"skuItems": [{"sku": "A", "partnerWarehouseId": 31, "count": 1}]},
        headers=AUTH,
        timeout=10,
    )
    assert v3.status_code == 400
    assert error_messages(v3) == ["Warehouse '31' is not a warehouse of businessId 904"]


@pytest.mark.parametrize(
    ("accounts", "named"),
    [
        ({"businesses": [{"id": "901"}]}, "businesses[0].id"),
        (
            {"businesses": [{"id": 1, "campaigns": [{"id": 2, "placementType": "XYZ"}]}]},
            "businesses[0].campaigns[0].placementType",
        ),
        (
            {"businesses": [{"id": 1, "groups": [{"id": 5, "warehouses": [99]}]}]},
            "warehouse 99 is not a warehouse of business 1",
        ),
        (
            {
                "businesses": [
                    {"id": 1, "campaigns": [{"id": 2, "warehouses": [{"id": 3}]}]},
                    {"id": 4, "campaigns": [{"id": 5, "warehouses": [{"id": 3}]}]},
                ]
            },
            "warehouse 3 is listed twice",
        ),
        ({"businesses": [{"id": 1, "shops": []}]}, "unknown field 'shops'"),
    ],
)
def test_bad_accounts_are_400_naming_the_field_and_change_nothing(
    sandbox: MarketSandbox, accounts: dict[str, Any], named: str
) -> None:
    response = requests.post(f"{sandbox.url}/_sandbox/accounts", json=accounts, timeout=10)
    assert response.status_code == 400
    assert named in error_messages(response)[0]
    assert len(campaigns(sandbox).json()["campaigns"]) == 4


def test_read_limits_are_configurable_over_http(sandbox: MarketSandbox) -> None:
    response = requests.post(
        f"{sandbox.url}/_sandbox/accounts/limits", json={"campaigns_calls": 5}, timeout=10
    )
    assert response.json()["campaigns_calls"] == 5
    assert campaigns(sandbox).headers["X-RateLimit-Resource-Limit"] == "5"
    bad = requests.post(f"{sandbox.url}/_sandbox/accounts/limits", json={"calls": 5}, timeout=10)
    assert bad.status_code == 400
    assert "calls" in error_messages(bad)[0]


def test_command_line_reads_accounts_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps(MIXED), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--port", "0", "--accounts", str(path)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        response = requests.get(f"{url}/v2/campaigns", headers=AUTH, timeout=10)
        assert [c["id"] for c in response.json()["campaigns"]] == [1001, 1002, 1003, 2001]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_command_line_refuses_a_bad_accounts_file(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text('{"businesses": [{"id": 0}]}', encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "sandbox", "--port", "0", "--accounts", str(path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "businesses[0].id" in result.stderr
