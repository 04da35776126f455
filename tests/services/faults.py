"""Throwaway Postgres and Redis servers that a test may stop, hang and start again (fault injection).

Each server runs on a free loopback port, in a temporary folder, started the way ``.ci/run`` starts the shared
ones (Postgres as the ``postgres`` user with trust auth; Redis without persistence). A test stops, pauses
(SIGSTOP) and resumes (SIGCONT) only the processes these objects started, by pid. Where the binaries are missing
or the tests do not run as root (Postgres refuses to run as root and needs ``su postgres``), the fixtures skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from services.common.db import session_scope
from services.common.migrate import upgrade_head
from services.common.models import JobStatus, Report, TrainingJob
from services.common.settings import Settings
from tests.services.conftest import API_KEY

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name), default=Path("/absent"))
"""The newest Postgres server binaries, as ``.ci/run`` picks them."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise TimeoutError(f"expected {what} within {timeout:.0f} s, got nothing")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Postgres backends and helpers of a postmaster), from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue


class _ThrowawayServer:
    """A server this test session started in its own folder: ``close`` stops it and removes the folder."""

    root: Path

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class PostgresServer(_ThrowawayServer):
    """A Postgres 15 cluster of its own: ``start``, ``stop`` (fast shutdown), ``pause`` / ``resume`` (SIGSTOP)."""

    def __init__(self) -> None:
        if os.geteuid() != 0 or not (PG_BIN / "initdb").is_file() or shutil.which("su") is None:
            pytest.skip("expected root and Postgres under /usr/lib/postgresql/*/bin to inject database faults")
        self.root = Path(tempfile.mkdtemp(prefix="mona-fault-pg."))
        self.port = free_port()
        self.paused: list[int] = []
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(f"{PG_BIN}/initdb -D {self.root}/data --auth=trust -U postgres")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, command: str) -> None:
        subprocess.run(["su", "postgres", "-c", command], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(f"{PG_BIN}/pg_ctl -D {self.root}/data -l {self.root}/pg.log -o '{options}' -w start")
        _wait(lambda: _listening(self.port), 10, "Postgres listening")

    def stop(self) -> None:
        self.resume()
        if (self.root / "data" / "postmaster.pid").is_file():
            self._as_postgres(f"{PG_BIN}/pg_ctl -D {self.root}/data -m fast -w stop")

    def postmaster_pid(self) -> int:
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: the server accepts TCP connections but never answers."""
        postmaster = self.postmaster_pid()
        self.paused = [postmaster, *_children(postmaster)]
        _signal_all(self.paused, signal.SIGSTOP)

    def resume(self) -> None:
        _signal_all(self.paused, signal.SIGCONT)
        self.paused = []

    def ensure_running(self) -> None:
        self.resume()
        if not _listening(self.port):
            self.start()


class RedisServer(_ThrowawayServer):
    """A ``redis-server`` of its own, without persistence: ``start``, ``stop`` (its data is lost, as in CI)."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("expected redis-server on PATH to inject broker faults (apt-get install redis-server)")
        self.binary, self.port = binary, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="mona-fault-redis."))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.root / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(command, cwd=self.root, stdout=log, stderr=log)
        _wait(lambda: _listening(self.port), 10, "Redis listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
        upgrade_head(server.url)
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def fault_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture()
def fault_settings(tmp_path: Path, fault_postgres: PostgresServer, fault_redis: RedisServer) -> Settings:
    """Settings on the session's fault servers, both running (restarted here if a test left one down)."""
    fault_postgres.ensure_running()
    fault_redis.ensure_running()
    _retire_everything(fault_postgres.url, fault_redis.url)
    env = {
        "MONA_DATA_DIR": str(tmp_path / "data"),
        "MONA_API_KEY": API_KEY,
        "DATABASE_URL": fault_postgres.url,
        "BROKER_URL": fault_redis.url,
        "MONA_READY_TIMEOUT_S": "2",
        "MONA_STALE_JOB_SECONDS": "5",
    }
    return Settings(**env)  # type: ignore[arg-type]


def _retire_everything(database_url: str, broker_url: str) -> None:
    """A clean slate on the fault servers (theirs alone): no queued or running work, no messages."""
    with session_scope(database_url) as session:
        for table in (TrainingJob, Report):
            active = table.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value])
            session.execute(update(table).where(active).values(status=JobStatus.CANCELLED.value))
    redis.Redis.from_url(broker_url).flushdb()
