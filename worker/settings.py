"""The one settings object, read from `STOCKSYNC_*` environment variables (and a `.env` file)."""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from platformdirs import user_data_dir
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_MARKET_BASE_URL = "https://api.partner.market.yandex.ru"


class SettingsError(ValueError):
    """A configuration value is wrong; the message names the variable and the rule."""


class V3Target(BaseModel):
    """Where a v3 campaign's stock goes: its business and its partner warehouse."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    business_id: StrictInt = Field(ge=1)
    warehouse_id: StrictInt = Field(ge=1)


# The settings that may come from a file named by `STOCKSYNC_<NAME>_FILE` (Docker secrets, a
# mounted Kubernetes secret): the credentials and the URLs, which carry passwords.
FILE_SETTINGS = ("database_url", "broker_url", "market_api_key", "market_oauth_token")


def _file_variable(field: str) -> str:
    return f"STOCKSYNC_{field.upper()}_FILE"


class SecretFiles(PydanticBaseSettingsSource):
    """`STOCKSYNC_<NAME>_FILE=/run/secrets/name`: the setting is the file's content, without its
    trailing newline (an empty file sets nothing). Setting both the variable and its `_FILE` is
    refused; an unreadable file is named with the reason, never its content."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads every file itself

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for field in FILE_SETTINGS:
            variable = _file_variable(field)
            path = os.environ.get(variable)
            if not path:
                continue
            if os.environ.get(f"STOCKSYNC_{field.upper()}"):
                raise SettingsError(
                    f"{variable}: STOCKSYNC_{field.upper()} is set too; set one of them"
                )
            try:
                content = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise SettingsError(f"{variable}: cannot read {path}: {reason}") from None
            if content:  # an empty file (a Docker secret left blank) sets nothing
                found[field] = content
        return found


class Settings(BaseSettings):
    """Everything configurable; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="STOCKSYNC_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str | None = None
    _group_index: dict[int, int] = PrivateAttr(default_factory=dict)
    data_dir: Path = Field(default_factory=lambda: Path(user_data_dir("stocksync")))
    broker_url: str | None = None
    market_base_url: str = DEFAULT_MARKET_BASE_URL
    market_api_key: SecretStr | None = None
    market_oauth_token: SecretStr | None = None
    warehouse_groups: list[list[int]] = Field(default_factory=list)
    # Campaigns sent by the v3 method (CONTRACT 3a): campaign id -> business and warehouse.
    v3_campaigns: dict[int, V3Target] = Field(default_factory=dict)
    v3_requests_per_minute: int = Field(default=50, ge=1)
    rate_limit_skus_per_minute: int = Field(default=100_000, ge=1)
    max_parallel_requests_per_campaign: int = Field(default=2, ge=1, le=4)
    drain_interval_seconds: float = Field(default=2.0, gt=0)
    refresh_hours: float = Field(default=20.0, gt=0, le=23)
    log_format: Literal["plain", "json"] = "plain"
    # How long a drain's claim on a batch lives; a dead worker's keys are taken again after it.
    claim_lease_seconds: float = Field(default=60.0, ge=1)
    # Retries of a push on 5xx, timeouts and broken connections before its keys go back.
    push_max_retries: int = Field(default=5, ge=0, le=20)
    # Celery's `rate_limit` of `stocks.push`: a ceiling per worker process (all its pool
    # processes together), never the Market's limit, which is per route across every worker and
    # kept in PostgreSQL (worker/rate_limiter.py). None ("off" or empty): no ceiling. The default
    # is far above what the global limits let one worker need (README, "Celery's own mechanisms").
    push_rate_limit: str | None = "100/s"
    # How often a parked campaign (401/403/404) is probed with one SKU to see if it works again.
    probe_interval_seconds: float = Field(default=60.0, gt=0)
    market_timeout_seconds: float = Field(default=10.0, gt=0)
    # Change-log rows and rejected changes older than this are pruned (see worker/housekeeping.py).
    retention_days: float = Field(default=7.0, ge=0)
    # PostgreSQL limits of every session (worker/database.make_engine): a frozen or cut-off
    # worker must not hold a lock, or a statement wait, for longer than these.
    database_connect_timeout_seconds: int = Field(default=10, ge=2)
    database_statement_timeout_seconds: float = Field(default=60.0, gt=0)
    database_lock_timeout_seconds: float = Field(default=10.0, gt=0)
    database_idle_in_transaction_timeout_seconds: float = Field(default=60.0, gt=0)
    # Hard limit of one task run (a push, a drain, a message's ingest; housekeeping gets 6x):
    # its pool process is replaced and the message goes back to the broker.
    task_time_limit_seconds: float = Field(default=300.0, ge=10)
    # `stocksync run`'s two Celery workers: processes of the ingest pool (stocks.changes) and of
    # the push pool (stocks.push, stocks.drain, stocks.verify); compose sets the same numbers.
    ingest_concurrency: int = Field(default=2, ge=1, le=64)
    push_concurrency: int = Field(default=4, ge=1, le=64)
    # The verify sweep (worker/verify.py): every acknowledged key is read back at least this often
    # (0: never); the stock type whose count is compared; the read limit and the share of it the
    # sweep may use; how often beat starts a sweep pass.
    verify_hours: float = Field(default=24.0, ge=0)
    verify_stock_type: Literal[
        "FIT", "FREEZE", "AVAILABLE", "QUARANTINE", "UTILIZATION", "DEFECT", "EXPIRED"
    ] = "AVAILABLE"
    verify_read_limit_per_minute: int = Field(default=100_000, ge=1)
    verify_v3_read_limit_per_minute: int = Field(default=500, ge=1)
    verify_read_share: float = Field(default=0.5, gt=0, le=1)
    verify_interval_seconds: float = Field(default=10.0, gt=0)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith("postgresql"):
            raise ValueError("must be a PostgreSQL SQLAlchemy URL (postgresql+psycopg://…)")
        return url

    @field_validator("push_rate_limit")
    @classmethod
    def _celery_rate(cls, limit: str | None) -> str | None:
        if limit is None or limit.strip().lower() in {"", "off", "none"}:
            return None
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(/\s*[smh])?\s*", limit)
        if found is None or float(found.group(1)) <= 0:
            raise ValueError(
                "must be a Celery rate above 0, tasks per second, minute or hour such as "
                "'100/s', '600/m' or '36000/h' (a bare number is per second), or 'off'"
            )
        return limit.replace(" ", "")

    @field_validator("market_base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if url.startswith("http://") and not _is_loopback(urlsplit(url).hostname):
            # Plain HTTP would carry the API key in clear text across a network.
            raise ValueError("http:// is accepted only for a loopback address; use https://")
        return url.rstrip("/")

    @field_validator("warehouse_groups")
    @classmethod
    def _groups_are_disjoint(cls, groups: list[list[int]]) -> list[list[int]]:
        seen: dict[int, int] = {}
        for number, group in enumerate(groups):
            if not group:
                raise ValueError(f"group {number} is empty; a group lists at least one campaign")
            for campaign in group:
                if campaign < 1:
                    raise ValueError(f"campaign id {campaign} must be ≥ 1")
                if campaign in seen:
                    raise ValueError(f"campaign {campaign} is in more than one group")
                seen[campaign] = number
        return groups

    @field_validator("v3_campaigns")
    @classmethod
    def _v3_campaign_ids_positive(cls, campaigns: dict[int, V3Target]) -> dict[int, V3Target]:
        for campaign in campaigns:
            if campaign < 1:
                raise ValueError(f"campaign id {campaign} must be ≥ 1")
        return campaigns

    @model_validator(mode="after")
    def _grouped_campaigns_go_by_v2(self) -> Settings:
        grouped = {c for group in self.warehouse_groups for c in group}
        both = sorted(grouped & self.v3_campaigns.keys())
        if both:
            raise ValueError(
                f"STOCKSYNC_V3_CAMPAIGNS and STOCKSYNC_WAREHOUSE_GROUPS: campaign(s) "
                f"{', '.join(map(str, both))} are in a warehouse group and in v3; "
                "a campaign in a warehouse group always goes by v2"
            )
        return self

    @model_validator(mode="after")
    def _time_limit_outlasts_a_request(self) -> Settings:
        # A push's soft limit (30 s before the hard one) must leave its Market request the whole
        # time the limiter counts it in flight (worker/runtime.request_deadline).
        request = self.request_deadline_seconds
        if self.task_time_limit_seconds - 30 <= request:
            raise ValueError(
                f"STOCKSYNC_TASK_TIME_LIMIT_SECONDS: must exceed {request + 30:g} (30 s of soft "
                f"limit beyond a Market request's {request:g} s deadline, from "
                "STOCKSYNC_MARKET_TIMEOUT_SECONDS)"
            )
        return self

    @property
    def request_deadline_seconds(self) -> float:
        """How long the limiter counts a Market request without an answer as in flight: the
        client's total deadline, as long again and a margin (a request given up on may still be
        served by the Market, and holds its slot until then)."""
        return 2 * self.market_timeout_seconds + 5

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment first, then `STOCKSYNC_<NAME>_FILE` files, then `.env`."""
        return (
            init_settings,
            env_settings,
            SecretFiles(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    def model_post_init(self, context: Any, /) -> None:
        """Indexes the warehouse groups once: every campaign to its group's first campaign."""
        self._group_index = {c: group[0] for group in self.warehouse_groups for c in group}

    def group_of(self, campaign_id: int) -> int:
        """The key's group: the first campaign of the campaign's warehouse group, else itself."""
        return self._group_index.get(campaign_id, campaign_id)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a check across variables names them itself
            lines.append(error["msg"].removeprefix("Value error, "))
            continue
        field = str(error["loc"][0]) if error["loc"] else "settings"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"STOCKSYNC_{field.upper()}: {message}")
    return "; ".join(lines)


def load_settings() -> Settings:
    """Settings from the environment, or `SettingsError` naming each bad variable."""
    try:
        return Settings()
    except SettingsError:
        raise
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    except ValueError as exc:  # pydantic-settings: a JSON variable that is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = f"STOCKSYNC_{found.group(1).upper()}" if found else "settings"
        raise SettingsError(f"{name}: is not valid JSON ({exc})") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, built once."""
    return load_settings()
