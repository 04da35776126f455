"""Service fixtures on real parts.

``.ci/run`` starts Postgres and Redis on loopback and exports ``MONA_TEST_DATABASE_URL`` (a server URL; each test
session creates and drops its own database) and ``MONA_TEST_BROKER_URL``. Without them (a laptop run) the same
tests use the embedded default: SQLite and Celery's filesystem transport. Under CI both are required.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from services.api.main import create_app
from services.common.migrate import upgrade_head
from services.common.settings import Settings, normalise_database_url
from services.common.tasks import QUEUE_CPU, QUEUE_GPU, make_celery

API_KEY = "test-key-" + uuid.uuid4().hex[:8]
REPO = Path(__file__).resolve().parents[2]


def _server_urls() -> tuple[str | None, str | None]:
    database, broker = os.environ.get("MONA_TEST_DATABASE_URL"), os.environ.get("MONA_TEST_BROKER_URL")
    if os.environ.get("CI") == "true" and not (database and broker):
        pytest.fail("CI must provide MONA_TEST_DATABASE_URL and MONA_TEST_BROKER_URL (see .ci/run)")
    return database, broker


@contextmanager
def _new_database(server: str) -> Iterator[str]:
    """A new, empty Postgres database on ``server`` for the block, dropped afterwards."""
    admin_url = make_url(normalise_database_url(server))
    name = f"mona_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def database_server_url() -> Iterator[str | None]:
    """A fresh Postgres database for this test session (dropped afterwards), or None for SQLite."""
    server, _ = _server_urls()
    if not server:
        yield None
        return
    with _new_database(server) as url:
        yield url


@pytest.fixture(scope="session")
def broker_server_url() -> str | None:
    """The test Redis (flushed once per session: it belongs to the tests), or None for the filesystem broker."""
    _, broker = _server_urls()
    if broker:
        import redis

        redis.Redis.from_url(broker).flushdb()
    return broker


@pytest.fixture()
def service_settings(tmp_path: Path, database_server_url: str | None, broker_server_url: str | None) -> Settings:
    """Settings for one test: its own data directory; the session's Postgres database or a new SQLite file.

    With Postgres every test shares one database (tables are created once by the migrations); tests must not
    assume empty tables, only their own rows.
    """
    env = {"MONA_DATA_DIR": str(tmp_path / "data"), "MONA_API_KEY": API_KEY}
    if database_server_url:
        env["DATABASE_URL"] = database_server_url
    if broker_server_url:
        env["BROKER_URL"] = broker_server_url
    settings = Settings(**env)  # type: ignore[arg-type]
    upgrade_head(settings.sqlalchemy_url)
    return settings


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process (a real worker or API)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONA_", "DATABASE_URL", "BROKER_URL"))}
    env.update({"MONA_DATA_DIR": str(settings.data_dir), "MONA_API_KEY": settings.api_key or ""})
    env.update({"DATABASE_URL": settings.sqlalchemy_url, "BROKER_URL": settings.broker_url})
    env.update({"MONA_STALE_JOB_SECONDS": str(settings.stale_job_seconds), "OMP_NUM_THREADS": "1"})
    return env


@pytest.fixture()
def isolated_settings(tmp_path: Path, broker_server_url: str | None) -> Iterator[Settings]:
    """Like ``service_settings`` but with a database of its own (a new Postgres database in CI), for end-to-end
    tests where a real worker must see only this test's jobs; the broker's job queues are purged first."""
    server, _ = _server_urls()
    env = {"MONA_DATA_DIR": str(tmp_path / "data"), "MONA_API_KEY": API_KEY, "MONA_STALE_JOB_SECONDS": "5"}
    if broker_server_url:
        env["BROKER_URL"] = broker_server_url
    with ExitStack() as stack:
        if server:
            env["DATABASE_URL"] = stack.enter_context(_new_database(server))
        settings = Settings(**env)  # type: ignore[arg-type]
        upgrade_head(settings.sqlalchemy_url)
        purge_job_queues(settings)
        yield settings


def purge_job_queues(settings: Settings) -> None:
    """Drop messages left on the shared test broker by earlier tests (their rows and files are not this test's)."""
    with make_celery(settings).connection_for_write() as connection:
        for queue in (QUEUE_GPU, QUEUE_CPU):
            connection.default_channel.queue_purge(queue)


@pytest.fixture()
def api(service_settings: Settings) -> Iterator[TestClient]:
    """The API in-process over HTTP semantics (ASGI), authenticated with the test key."""
    with TestClient(create_app(service_settings), headers={"X-API-Key": API_KEY}) as client:
        yield client


class WorkerProcess:
    """A real ``mona worker`` in its own process group, so a test can SIGKILL it like a crashed machine."""

    def __init__(self, settings: Settings, log: Path, queues: str = "gpu,cpu") -> None:
        self.settings, self.log, self.queues = settings, log, queues
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        command = [sys.executable, "-m", "mona_core", "worker", "--queues", self.queues, "--concurrency", "1"]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                command, env=settings_env(self.settings), cwd=REPO, stdout=sink, stderr=sink, start_new_session=True
            )
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture()
def worker(service_settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A started real worker; stopped (or killed) after the test. Its log is ``tmp_path / "worker.log"``."""
    process = WorkerProcess(service_settings, tmp_path / "worker.log").start()
    yield process
    process.stop()


@pytest.fixture()
def live_api_url(isolated_settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The API under uvicorn on a free port and one real worker, on the test's own database; yields its base URL."""
    from services.embedded import free_port, running_api

    worker = WorkerProcess(isolated_settings, tmp_path / "worker.log").start()
    port = free_port("127.0.0.1")
    try:
        with running_api(isolated_settings, "127.0.0.1", port):
            yield f"http://127.0.0.1:{port}"
    finally:
        worker.stop()


def wait_for(predicate: object, timeout: float, interval: float = 0.5, what: str = "condition") -> None:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass (then fail with ``what``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
