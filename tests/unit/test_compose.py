"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the Compose
Specification's JSON schema, the stack's wiring, and every command they run exists here."""

from __future__ import annotations

import json
import re
import shlex
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from celery import Celery
from celery.app.control import Inspect
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli

from stocksync.cli import build_parser
from worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
# The Compose Specification's schema, as the check-jsonschema package ships it (vendored there
# from compose-spec/compose-spec), so no copy of it lives in this repository.
SCHEMA_FILE = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")

SERVICES = {
    "postgres",
    "rabbitmq",
    "migrate",
    "worker-ingest",
    "worker-push",
    "beat",
    "flower",
    "metrics",
    "prometheus",
    "grafana",
}
WORKERS = {"worker-ingest", "worker-push"}
OUR_SERVICES = {"migrate", *WORKERS, "beat", "flower", "metrics"}
MONITORING = {"prometheus", "grafana"}
DEPLOY = ROOT / "deploy"
# Configured by the stack itself (URLs) or by the image (data directory).
SET_BY_THE_STACK = {"STOCKSYNC_DATABASE_URL", "STOCKSYNC_BROKER_URL", "STOCKSYNC_DATA_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def _healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return shlex.split(test)
    kind, *rest = test
    if kind == "CMD-SHELL":
        return shlex.split(" ".join(rest).replace("$$", "$"))
    assert kind == "CMD", test
    return rest


def _interpolated(argv: list[str]) -> list[str]:
    """`${NAME:-default}` replaced by its default, as compose does with NAME unset."""
    return [re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", part) for part in argv]


def _commands_run(services: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Every command our image runs: the services' commands and their health checks."""
    found = []
    for name in sorted(OUR_SERVICES):
        service = services[name]
        found.append((name, _interpolated(_argv(service["command"]))))
        if "healthcheck" in service:
            found.append((f"{name} healthcheck", _healthcheck_argv(service)))
    return found


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))

    jsonschema.Draft7Validator(schema).validate(compose)


def test_stack_has_the_services_and_declares_its_named_volumes(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert set(services) == SERVICES
    used = {
        volume.split(":", 1)[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert used == {
        "postgres-data",
        "rabbitmq-data",
        "beat-schedule",
        "prometheus-data",
        "grafana-data",
    }
    assert used <= set(compose["volumes"])


def test_every_long_running_service_restarts_and_migrate_runs_once(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in SERVICES - {"migrate"}:
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"


def test_health_checks_use_each_servers_own_probe(services: dict[str, dict[str, Any]]) -> None:
    assert _healthcheck_argv(services["postgres"])[0] == "pg_isready"
    assert _healthcheck_argv(services["rabbitmq"]) == ["rabbitmq-diagnostics", "-q", "ping"]
    for name, node in (("worker-ingest", "ingest"), ("worker-push", "push")):
        argv = _healthcheck_argv(services[name])
        assert argv[:5] == ["celery", "-A", "worker", "inspect", "ping"], name
        assert argv[argv.index("--destination") + 1] == f"{node}@$HOSTNAME", name
    assert "/healthcheck" in " ".join(_healthcheck_argv(services["flower"]))


def test_services_wait_for_healthy_dependencies_and_a_finished_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    for name in WORKERS:
        assert conditions(name) == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "rabbitmq": "service_healthy",
        }
    assert conditions("beat")["migrate"] == "service_completed_successfully"
    assert conditions("flower")["rabbitmq"] == "service_healthy"


def test_stack_points_every_service_at_postgres_and_rabbitmq(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in OUR_SERVICES:
        environment = services[name]["environment"]
        assert environment["STOCKSYNC_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in environment["STOCKSYNC_DATABASE_URL"]
        assert environment["STOCKSYNC_BROKER_URL"].startswith("amqp://")
        assert "@rabbitmq:5672/" in environment["STOCKSYNC_BROKER_URL"]


def test_market_credentials_come_only_from_the_environment_or_the_docker_secret(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert compose["secrets"]["market_api_key"]["file"] == (
        "${STOCKSYNC_MARKET_API_KEY_SECRET:-./secrets/market_api_key}"
    )
    for name in OUR_SERVICES:
        environment = services[name]["environment"]
        assert environment["STOCKSYNC_MARKET_API_KEY"] is None, name
        assert environment["STOCKSYNC_MARKET_OAUTH_TOKEN"] is None, name
        assert environment["STOCKSYNC_MARKET_API_KEY_FILE"] == "/run/secrets/market_api_key"
        assert services[name]["secrets"] == ["market_api_key"], name


def _worker_options(service: dict[str, Any]) -> dict[str, Any]:
    return _parse_celery(_interpolated(_argv(service["command"]))).params


def test_ingest_and_push_have_workers_of_their_own_covering_every_queue(
    services: dict[str, dict[str, Any]],
) -> None:
    from worker.app import CHANGES_QUEUE, celery_config

    queues = {
        q.name for q in celery_config(Settings(database_url="postgresql://x/y"))["task_queues"]
    }
    ingest = _worker_options(services["worker-ingest"])
    push = _worker_options(services["worker-push"])
    defaults = Settings()

    assert ingest["queues"] == [CHANGES_QUEUE]
    assert set(push["queues"]) == queues - {CHANGES_QUEUE}
    assert (ingest["concurrency"], push["concurrency"]) == (
        defaults.ingest_concurrency,
        defaults.push_concurrency,
    )
    assert "${STOCKSYNC_INGEST_CONCURRENCY:-" in " ".join(services["worker-ingest"]["command"])
    assert "${STOCKSYNC_PUSH_CONCURRENCY:-" in " ".join(services["worker-push"]["command"])
    assert ingest["hostname"].startswith("ingest@") and push["hostname"].startswith("push@")


def test_logs_rotate_and_our_services_have_resource_limits(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert {"max-size", "max-file"} <= set(logging["options"]), name
    for name in OUR_SERVICES:
        limits = services[name]["deploy"]["resources"]["limits"]
        assert float(limits["cpus"]) > 0 and limits["memory"], name


def test_rabbitmq_management_ui_is_published_on_loopback_only(
    services: dict[str, dict[str, Any]],
) -> None:
    assert services["rabbitmq"]["image"].endswith("-management")
    assert services["rabbitmq"]["ports"] == ["127.0.0.1:${RABBITMQ_MANAGEMENT_PORT:-15672}:15672"]


def test_the_image_installs_no_embedded_postgresql() -> None:
    lines = DOCKERFILE.read_text("utf-8").splitlines()
    installs = [line for line in lines if "pip install" in line]

    assert installs and all("embedded" not in line and "[" not in line for line in installs)


def test_every_setting_can_be_passed_to_the_stack(services: dict[str, dict[str, Any]]) -> None:
    settings = {f"STOCKSYNC_{field.upper()}" for field in Settings.model_fields}
    settings |= {"STOCKSYNC_MARKET_API_KEY_FILE"}
    for name in OUR_SERVICES:
        missing = settings - SET_BY_THE_STACK - set(services[name]["environment"])
        assert missing == set(), f"{name}: add to x-stocksync-environment in docker-compose.yml"


def test_flower_requires_basic_auth_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    value = services["flower"]["environment"]["FLOWER_BASIC_AUTH"]

    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", value)


def _parse_celery(argv: list[str]) -> click.Context:
    """Parses `celery -A worker SUB …` with Celery's own CLI; unknown options raise."""
    assert argv[:3] == ["celery", "-A", "worker"], argv
    sub, *rest = argv[3:]
    assert sub in celery_cli.commands, f"celery has no sub-command {sub!r}"
    # A bare app: parsing must not resolve this project's configuration (it would start an
    # embedded PostgreSQL); `-A worker` is checked apart.
    app = Celery("compose-check", set_as_current=False)
    parent = click.Context(
        celery_cli,
        info_name="celery",
        obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True),
    )
    return celery_cli.commands[sub].make_context(sub, rest, parent=parent)


def test_every_command_the_stack_runs_exists(services: dict[str, dict[str, Any]]) -> None:
    import worker  # what `celery -A worker` imports

    assert isinstance(worker.app, Celery)
    parser = build_parser()
    for where, argv in _commands_run(services):
        if argv[0] == "celery":
            context = _parse_celery(argv)
            if argv[3] == "inspect":
                assert hasattr(Inspect, context.params["command"]), where
        elif argv[0] == "stocksync":
            parser.parse_args(argv[1:])
        else:
            assert argv[:2] == ["python", "-c"], f"{where}: unexpected command {argv}"
            compile(argv[2], where, "exec")


def test_dockerfile_builds_a_non_root_python_311_image_from_existing_paths() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    copied = [part for line in lines if line.startswith("COPY ") for part in line.split()[1:-1]]
    assert copied, "the Dockerfile copies the project"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert any("pip install ." in line for line in lines)


def test_dockerfile_copies_every_package_pip_installs() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    packages = re.search(r"^packages = \[(.*)\]$", pyproject, re.MULTILINE)
    assert packages is not None
    for package in re.findall(r'"([\w.]+)"', packages.group(1)):
        top = package.split(".")[0]
        assert f"COPY {top} ./{top}" in text, f"the image lacks the package {top}"


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()

    assert {".venv", ".env", ".git"} <= set(ignored)


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: target in the container -> source in the repository."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = ROOT / source
    return mounts


def test_prometheus_and_grafana_are_optional_under_the_monitoring_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
    assert all("profiles" not in services[name] for name in SERVICES - MONITORING)


def test_metrics_service_listens_beyond_its_container_and_publishes_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    metrics = services["metrics"]
    args = build_parser().parse_args(_argv(metrics["command"])[1:])

    assert (args.command, args.host, args.port) == ("metrics", "0.0.0.0", 9464)
    assert metrics["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in {"metrics", *MONITORING}:
        for port in services[name]["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_monitoring_mounts_files_that_exist_in_the_repository(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = _bind_mounts(services["prometheus"])
    grafana = _bind_mounts(services["grafana"])

    assert prometheus == {"/etc/prometheus": DEPLOY / "prometheus"}
    assert grafana["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    for source in [*prometheus.values(), *grafana.values()]:
        assert source.exists(), source
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_prometheus_scrapes_the_metrics_service_and_flower_and_loads_the_rules(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text("utf-8"))
    targets = {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }
    metrics_port = build_parser().parse_args(_argv(services["metrics"]["command"])[1:]).port
    flower_port = _argv(services["flower"]["command"])[-1].removeprefix("--port=")

    assert targets == {
        "stocksync": [f"metrics:{metrics_port}"],
        "flower": [f"flower:{flower_port}"],
    }
    for rule_file in config["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file(), rule_file


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard(
    services: dict[str, dict[str, Any]],
) -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "stocksync.yml").read_text())[
        "providers"
    ]
    dashboard = json.loads((DEPLOY / "grafana" / "stocksync.json").read_text("utf-8"))
    mounted = {target: path for target, path in _bind_mounts(services["grafana"]).items()}

    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    assert mounted[provider["options"]["path"] + "/stocksync.json"] == (
        DEPLOY / "grafana" / "stocksync.json"
    )
    uids = {
        target["datasource"]["uid"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    assert uids == {source["uid"]}
