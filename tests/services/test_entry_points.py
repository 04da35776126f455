"""The containers' commands, run natively as CI can (Postgres + Redis in CI): ``mona db upgrade`` (the migrate
service / Job) and ``mona api`` (the api service / Deployment) come up against the test database and broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from services.common.migrate import alembic_config
from services.common.settings import Settings
from services.embedded import free_port
from tests.services.conftest import API_KEY, REPO, settings_env, wait_for


def _mona(*args: str) -> list[str]:
    """The ``mona`` console script, as the containers run it (through the interpreter of this environment)."""
    return [sys.executable, "-m", "mona_core", *args]


def test_mona_db_upgrade_brings_the_database_to_head(isolated_settings: Settings) -> None:
    done = subprocess.run(
        _mona("db", "upgrade"),
        env=settings_env(isolated_settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    engine = create_engine(isolated_settings.sqlalchemy_url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    assert current == ScriptDirectory.from_config(alembic_config(isolated_settings.sqlalchemy_url)).get_current_head()


def test_mona_api_serves_health_readiness_and_authenticated_routes(isolated_settings: Settings) -> None:
    port = free_port("127.0.0.1")
    process = subprocess.Popen(
        _mona("api", "--host", "127.0.0.1", "--port", str(port)),
        env=settings_env(isolated_settings),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, 90, what="mona api to answer /readyz")
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{base}/v1/datasets").status_code == 401
        assert httpx.get(f"{base}/v1/datasets", headers={"X-API-Key": API_KEY}).status_code == 200
        assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "MONA as a service"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
