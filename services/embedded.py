"""``mona serve``: the API and one worker on this machine, with no servers (SQLite + Celery's filesystem broker).

The same code as the containerised deployment: the API is the FastAPI app under uvicorn, the worker is a real
``mona worker`` process; only ``DATABASE_URL`` and ``BROKER_URL`` differ (both default to the embedded ones, and
both can still be pointed at Postgres / Redis).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from services.api.main import create_app
from services.common.auth import generate_key
from services.common.migrate import upgrade_head
from services.common.settings import Settings

logger = logging.getLogger(__name__)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def embedded_settings(data_dir: Path | None, api_key: str | None) -> tuple[Settings, bool]:
    """Settings from the environment with the command-line overrides; a key is generated when none is given."""
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["MONA_DATA_DIR"] = data_dir
    key = api_key or os.environ.get("MONA_API_KEY")
    generated = key is None
    overrides["MONA_API_KEY"] = key or generate_key()
    return Settings(**overrides), generated  # type: ignore[arg-type]


def worker_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MONA_DATA_DIR": str(settings.data_dir.resolve()), "DATABASE_URL": settings.sqlalchemy_url})
    env.update({"BROKER_URL": settings.broker_url, "MONA_API_KEY": settings.api_key or ""})
    return env


@contextmanager
def running_worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A ``mona worker`` child process (its own process group) for the lifetime of the block; log in the data dir."""
    log = (settings.data_dir / "worker.log").open("ab")
    command = [sys.executable, "-m", "mona_core", "worker", "--queues", "gpu,cpu", "--concurrency", "1"]
    process = subprocess.Popen(
        command, env=worker_environment(settings), stdout=log, stderr=log, start_new_session=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        log.close()


@contextmanager
def running_api(settings: Settings, host: str, port: int) -> Iterator[uvicorn.Server]:
    """uvicorn in a background thread until the block ends; returns once the server accepts connections."""
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"expected the API to start on {host}:{port}, got no server (port in use?)")
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def serve(host: str, port: int, data_dir: Path | None, api_key: str | None, demo: bool = False) -> int:
    """Run API + worker until interrupted (or, with ``demo``, run the REST demo against them and stop)."""
    settings, generated = embedded_settings(data_dir, api_key)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade_head(settings.sqlalchemy_url)
    url = f"http://{host}:{port}"
    with running_worker(settings), running_api(settings, host, port):
        _announce(settings, url, generated)
        if demo:
            from services.rest_demo import run_rest_demo

            return run_rest_demo(url, settings.api_key or "", settings.data_dir / "demo")
        _wait_for_interrupt()
    return 0


def _announce(settings: Settings, url: str, generated: bool) -> None:
    sys.stdout.write(f"MONA API at {url}  (OpenAPI docs: {url}/docs)\n")
    origin = "generated for this run" if generated else "from --api-key / MONA_API_KEY"
    sys.stdout.write(f"API key ({origin}): {settings.api_key}\n")
    sys.stdout.write(f"data directory: {settings.data_dir.resolve()}  (worker log: worker.log there)\n")
    sys.stdout.flush()


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
