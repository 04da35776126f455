"""docker-compose.yml: commands, settings, dependencies, healthchecks, volumes and the GPU profile."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from services.common.settings import Settings
from tests.deploy import REPO_ROOT, parse_mona_command, settings_aliases

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
APP_DOCKERFILES = {"Dockerfile", "Dockerfile.gpu"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
OPERATOR_ENV = {"MONA_API_KEY": "compose-test-key"}
"""What an operator must export before ``docker compose up`` (the variables the file requires)."""


class MissingVariable(Exception):
    """Compose's ``${VAR:?message}`` with ``VAR`` unset: compose refuses to start."""


def _substitute(match: re.Match[str], env: dict[str, str]) -> str:
    name, operator, text = match.group(1), match.group(2), match.group(3) or ""
    if name in env:
        return env[name]
    if operator == "?":
        raise MissingVariable(f"{name}: {text}")
    return text


def interpolate(value: str, env: dict[str, str] = OPERATOR_ENV) -> str:
    """Compose's ``${VAR:-default}`` and ``${VAR:?message}`` with only ``env`` set (default: what an operator must
    export): the variable, else the default (or empty); a required variable missing raises ``MissingVariable``."""
    return _VARIABLE.sub(lambda match: _substitute(match, env), value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and "services" in data
    return data


@pytest.fixture(scope="module")
def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services built from one of the project's Dockerfiles."""
    apps = {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict) and service["build"].get("dockerfile") in APP_DOCKERFILES
    }
    assert {"migrate", "api", "worker", "worker-gpu"} <= set(apps), f"expected the app services, got {sorted(apps)}"
    return apps


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: interpolate(str(value)) for name, value in env.items()}


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return [interpolate(part) for part in (shlex.split(command) if isinstance(command, str) else command)]


def test_app_commands_parse_with_the_real_cli(app_services: dict[str, dict[str, Any]]) -> None:
    parsed = {name: parse_mona_command(argv(service)) for name, service in app_services.items()}
    assert (parsed["migrate"].command, parsed["migrate"].db_command) == ("db", "upgrade")
    assert (parsed["api"].command, parsed["api"].host, parsed["api"].port) == ("api", "0.0.0.0", 8000)
    assert parsed["worker"].command == "worker" and parsed["worker"].queues.split(",") == ["gpu", "cpu"]
    assert parsed["worker-gpu"].command == "worker" and parsed["worker-gpu"].queues == "gpu"
    assert parsed["worker-gpu"].concurrency == 1, "one worker process per GPU"


def test_app_environment_names_are_settings_aliases(app_services: dict[str, dict[str, Any]]) -> None:
    aliases = settings_aliases()
    for name, service in app_services.items():
        unknown = set(environment(service)) - aliases
        assert not unknown, f"{name}: expected Settings aliases, got unknown variables {sorted(unknown)}"


def test_app_environment_builds_settings_for_postgres_and_redis(app_services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services.items():
        settings = Settings.model_validate(environment(service))
        assert make_url(settings.sqlalchemy_url).drivername == "postgresql+psycopg", name
        assert settings.broker_url.startswith("redis://") and not settings.embedded_broker, name
        assert settings.api_key, f"{name}: expected an API key"


def test_api_waits_for_migrations_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker", "worker-gpu"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert interpolate(services["postgres"]["image"]) == "postgres:15", "the official image is the default"
    assert interpolate(services["redis"]["image"]) == "redis:7"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "urllib" in api_check and "127.0.0.1:8000/readyz" in api_check
    assert interpolate(str(services["api"]["ports"])) == "['127.0.0.1:8000:8000']"
    for name in ("worker", "worker-gpu"):
        check = services[name]["healthcheck"]["test"]
        assert check[0] == "CMD" and parse_mona_command(check[1:]).ping, f"{name}: expected `mona worker --ping`"


def test_logs_are_rotated_everywhere(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging["options"]["max-size"] and int(logging["options"]["max-file"]) >= 1, name


def test_base_images_default_to_the_official_ones(app_services: dict[str, dict[str, Any]]) -> None:
    args = {name: interpolate(value) for name, value in app_services["api"]["build"]["args"].items()}
    assert args == {
        "PYTHON_IMAGE": "python:3.11-slim",
        "PIP_INDEX_ARGS": "--extra-index-url https://download.pytorch.org/whl/cpu",
    }


def test_gpu_worker_is_a_profile_that_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 1 and device["capabilities"] == ["gpu"]
    others = [name for name, service in compose["services"].items() if name != "worker-gpu"]
    assert all("profiles" not in compose["services"][name] for name in others), "only the GPU worker is optional"


def test_named_volumes_are_mounted_at_the_data_dir(
    compose: dict[str, Any], app_services: dict[str, dict[str, Any]]
) -> None:
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in compose["services"]["postgres"]["volumes"]
    for name, service in app_services.items():
        data_dir = environment(service)["MONA_DATA_DIR"]
        assert f"artifacts:{data_dir}" in service["volumes"], f"{name}: expected artifacts mounted at {data_dir}"


def test_compose_refuses_to_start_without_an_api_key(app_services: dict[str, dict[str, Any]]) -> None:
    for name, service in app_services.items():
        raw = str(service["environment"]["MONA_API_KEY"])
        with pytest.raises(MissingVariable, match="MONA_API_KEY"):
            interpolate(raw, env={})
        assert interpolate(raw, env={"MONA_API_KEY": "k"}) == "k", name
