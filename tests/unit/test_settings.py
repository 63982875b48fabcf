"""Settings: every bad value is refused with a message naming its STOCKSYNC_* variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.settings import Settings, SettingsError, load_settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _refusal(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    return str(caught.value)


def test_defaults_need_no_variable() -> None:
    settings = load_settings()

    assert settings.database_url is None
    assert settings.broker_url is None
    assert settings.warehouse_groups == []
    assert settings.rate_limit_skus_per_minute == 100_000
    assert settings.max_parallel_requests_per_campaign == 2
    assert settings.log_format == "plain"


def test_malformed_warehouse_groups_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_WAREHOUSE_GROUPS", "[[1001, 1002]")

    assert "STOCKSYNC_WAREHOUSE_GROUPS" in message
    assert "JSON" in message


def test_campaign_in_two_groups_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_WAREHOUSE_GROUPS", "[[1001, 1002], [1002, 2001]]")

    assert message.startswith("STOCKSYNC_WAREHOUSE_GROUPS")
    assert "1002" in message
    assert "more than one group" in message


def test_empty_group_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_WAREHOUSE_GROUPS", "[[1001], []]")

    assert message.startswith("STOCKSYNC_WAREHOUSE_GROUPS")
    assert "empty" in message


@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_rate_limit_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE", value)

    assert message.startswith("STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE")


@pytest.mark.parametrize("value", ["0", "5", "-1"])
def test_parallel_requests_outside_one_to_four_are_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN", value)

    assert message.startswith("STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN")


@pytest.mark.parametrize("value", ["1", "4"])
def test_parallel_requests_at_the_bounds_are_accepted(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN", value)

    assert load_settings().max_parallel_requests_per_campaign == int(value)


@pytest.mark.parametrize(
    "url", ["mysql://root@localhost/stock", "sqlite:///stock.db", "localhost:5432"]
)
def test_database_url_of_another_scheme_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_DATABASE_URL", url)

    assert message.startswith("STOCKSYNC_DATABASE_URL")
    assert "PostgreSQL" in message


def test_every_bad_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE", "0")
    monkeypatch.setenv("STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN", "9")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert "STOCKSYNC_RATE_LIMIT_SKUS_PER_MINUTE" in str(caught.value)
    assert "STOCKSYNC_MAX_PARALLEL_REQUESTS_PER_CAMPAIGN" in str(caught.value)


def test_group_of_maps_a_campaign_to_its_groups_first_campaign(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[1001, 1002], [2001, 2002, 2003]]")
    settings = load_settings()

    assert settings.group_of(1001) == 1001
    assert settings.group_of(1002) == 1001
    assert settings.group_of(2003) == 2001


def test_group_of_a_campaign_in_no_group_is_the_campaign_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[1001, 1002]]")

    assert load_settings().group_of(3001) == 3001


def test_readme_lists_every_setting_with_its_variable() -> None:
    documented = set(re.findall(r"`(STOCKSYNC_[A-Z0-9_]+)`", README.read_text(encoding="utf-8")))
    variables = {f"STOCKSYNC_{name.upper()}" for name in Settings.model_fields}

    assert variables - documented == set(), "add these to the README's configuration table"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:9000", "http://[::1]:80", "https://x.ru"]
)
def test_plain_http_is_accepted_for_loopback_addresses_only(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_BASE_URL", url)
    assert load_settings().market_base_url == url


@pytest.mark.parametrize(
    "url", ["http://api.partner.market.yandex.ru", "http://10.0.0.5:8080", "http://sandbox:8080"]
)
def test_plain_http_to_another_host_is_refused(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_BASE_URL", url)
    with pytest.raises(SettingsError, match=r"STOCKSYNC_MARKET_BASE_URL: .*http:// .*loopback"):
        load_settings()


def test_v3_campaigns_are_read_as_campaign_to_business_and_warehouse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "STOCKSYNC_V3_CAMPAIGNS", '{"4001": {"business_id": 901, "warehouse_id": 7001}}'
    )

    settings = load_settings()

    assert settings.v3_campaigns[4001].business_id == 901
    assert settings.v3_campaigns[4001].warehouse_id == 7001
    assert settings.v3_requests_per_minute == 50


def test_v3_defaults_are_no_campaign_and_fifty_requests() -> None:
    settings = load_settings()

    assert settings.v3_campaigns == {}
    assert settings.v3_requests_per_minute == 50


@pytest.mark.parametrize(
    "value",
    [
        '{"0": {"business_id": 901, "warehouse_id": 7001}}',
        '{"x": {"business_id": 901, "warehouse_id": 7001}}',
        '{"4001": {"business_id": 0, "warehouse_id": 7001}}',
        '{"4001": {"business_id": 901, "warehouse_id": -1}}',
        '{"4001": {"business_id": 901}}',
        '{"4001": {"business_id": true, "warehouse_id": 7001}}',
        '{"4001": {"business_id": 901, "warehouse_id": 7001, "extra": 1}}',
        "[4001]",
    ],
)
def test_bad_v3_campaigns_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_V3_CAMPAIGNS", value)

    assert message.startswith("STOCKSYNC_V3_CAMPAIGNS")


def test_malformed_v3_campaigns_json_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_V3_CAMPAIGNS", '{"4001": ')

    assert "STOCKSYNC_V3_CAMPAIGNS" in message
    assert "JSON" in message


def test_grouped_campaign_in_v3_is_refused_naming_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKSYNC_WAREHOUSE_GROUPS", "[[4001, 4002]]")
    message = _refusal(
        monkeypatch,
        "STOCKSYNC_V3_CAMPAIGNS",
        '{"4002": {"business_id": 901, "warehouse_id": 7001}}',
    )

    assert "STOCKSYNC_V3_CAMPAIGNS" in message
    assert "STOCKSYNC_WAREHOUSE_GROUPS" in message
    assert "4002" in message


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_v3_requests_per_minute_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    message = _refusal(monkeypatch, "STOCKSYNC_V3_REQUESTS_PER_MINUTE", value)

    assert message.startswith("STOCKSYNC_V3_REQUESTS_PER_MINUTE")


SECRET = "sk-file-7c41e2a0-never-shown"


def test_secrets_are_read_from_the_files_their_file_variables_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = tmp_path / "market_api_key"
    key.write_text(SECRET + "\n", encoding="utf-8")  # as `echo` writes it
    url = tmp_path / "database_url"
    url.write_text("postgresql+psycopg://u:pw@db:5432/s", encoding="utf-8")
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY_FILE", str(key))
    monkeypatch.setenv("STOCKSYNC_DATABASE_URL_FILE", str(url))

    settings = load_settings()

    assert settings.market_api_key is not None
    assert settings.market_api_key.get_secret_value() == SECRET
    assert settings.database_url == "postgresql+psycopg://u:pw@db:5432/s"
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_an_empty_secret_file_sets_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "key").write_text("", encoding="utf-8")
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY_FILE", str(tmp_path / "key"))

    assert load_settings().market_api_key is None


def test_a_secret_set_both_ways_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "key").write_text(SECRET, encoding="utf-8")
    monkeypatch.setenv("STOCKSYNC_MARKET_API_KEY", SECRET)
    message = _refusal(monkeypatch, "STOCKSYNC_MARKET_API_KEY_FILE", str(tmp_path / "key"))

    assert message.startswith("STOCKSYNC_MARKET_API_KEY_FILE: STOCKSYNC_MARKET_API_KEY is set too")
    assert SECRET not in message


def test_an_unreadable_secret_file_is_named_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "absent"
    message = _refusal(monkeypatch, "STOCKSYNC_MARKET_API_KEY_FILE", str(missing))

    assert message == (
        f"STOCKSYNC_MARKET_API_KEY_FILE: cannot read {missing}: No such file or directory"
    )


def test_a_task_time_limit_shorter_than_a_market_request_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STOCKSYNC_MARKET_TIMEOUT_SECONDS", "30")  # a request: 65 s in flight
    message = _refusal(monkeypatch, "STOCKSYNC_TASK_TIME_LIMIT_SECONDS", "90")

    assert message.startswith("STOCKSYNC_TASK_TIME_LIMIT_SECONDS: must exceed 95 ")


def test_pool_sizes_default_to_two_ingest_and_four_push_processes() -> None:
    settings = load_settings()

    assert (settings.ingest_concurrency, settings.push_concurrency) == (2, 4)


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("600/m", "600/m"),
        ("10 / s", "10/s"),
        ("0.5/s", "0.5/s"),
        ("36000/h", "36000/h"),
        ("20", "20"),
        ("off", None),
        ("", None),
    ],
)
def test_the_push_rate_limit_is_a_celery_rate_or_off(given: str, kept: str | None) -> None:
    assert Settings(push_rate_limit=given).push_rate_limit == kept


@pytest.mark.parametrize("bad", ["fast", "0/s", "10/d", "-5/m", "10/s/m"])
def test_a_push_rate_limit_that_celery_cannot_read_is_refused_naming_the_variable(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STOCKSYNC_PUSH_RATE_LIMIT", bad)
    with pytest.raises(SettingsError, match="STOCKSYNC_PUSH_RATE_LIMIT: must be a Celery rate"):
        load_settings()
