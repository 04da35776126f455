"""``mona serve``: the API and one worker on this machine, with no servers (SQLite + Celery's filesystem broker).

The same code as the containerised deployment: the API is the FastAPI app under uvicorn, the worker is a real
``mona worker`` process; only ``DATABASE_URL`` and ``BROKER_URL`` differ (both default to the embedded ones, and
both can still be pointed at Postgres / Redis). ``serve`` supervises its worker (``WorkerSupervisor``): a dead
worker is restarted with a back-off, and the worker dies with ``serve``, even when ``serve`` is SIGKILLed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import uvicorn

from services.api.main import create_app
from services.common.auth import generate_key
from services.common.migrate import upgrade_head
from services.common.settings import Settings
from services.worker.lock import LOCKED_EXIT, WorkerLocked, acquire_worker_lock

logger = logging.getLogger(__name__)


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


KEY_FILE = "api-key"
"""Where ``mona serve`` keeps the key it made when none was given (in the data directory, mode 0600)."""


def stored_key(data_dir: Path) -> str:
    """The data directory's own key: made on the first start, then reused, so restarts add no new keys."""
    path = data_dir / KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = generate_key()
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def _read_key(path: Path) -> str:
    if path.stat().st_mode & 0o077:
        logger.warning("%s was readable by others; restricting it to its owner (0600)", path)
        path.chmod(0o600)
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"expected an API key in {path}, got an empty file (delete it to make a new key)")
    return key


def embedded_settings(data_dir: Path | None, api_key: str | None) -> tuple[Settings, bool]:
    """Settings from the environment with the command-line overrides; without a key, the data directory's own
    (``stored_key``) is used. The flag says whether the key is that stored one."""
    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["MONA_DATA_DIR"] = data_dir
    given = api_key or os.environ.get("MONA_API_KEY")
    overrides["MONA_API_KEY"] = given or stored_key(Settings(**overrides).data_dir)  # type: ignore[arg-type]
    overrides["MONA_READY_REQUIRES_WORKER"] = True
    return Settings(**overrides), not given  # type: ignore[arg-type]


def worker_environment(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"MONA_DATA_DIR": str(settings.data_dir.resolve()), "DATABASE_URL": settings.sqlalchemy_url})
    env.update({"BROKER_URL": settings.broker_url, "MONA_API_KEY": settings.api_key or ""})
    return env


def _load_libc() -> ctypes.CDLL | None:
    return ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


_LIBC = _load_libc()  # loaded here: a forked child must not dlopen while another thread may hold the loader lock
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: on Linux, the child gets SIGKILL when the thread that started it (or ``serve``) dies."""

    def prepare() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return prepare


def _kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the child's process group (the worker and its pool processes); quiet when it is already gone."""
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


class WorkerSupervisor:
    """Keeps one ``mona worker`` child (its own process group, log in the data dir) alive until ``stop``.

    A worker that dies is restarted after a back-off (``backoff[0]`` s, doubling up to ``backoff[1]`` s while it
    keeps dying within a minute); each death is logged. The child is started by the supervisor thread with
    ``PR_SET_PDEATHSIG``, so it is killed with ``serve`` even when ``serve`` gets SIGKILL.
    """

    def __init__(self, settings: Settings, backoff: tuple[float, float] = (1.0, 30.0)) -> None:
        self.settings, self.backoff = settings, backoff
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop, self._started = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="mona-worker-supervisor", daemon=True)

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        self._started.wait(timeout=30)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _spawn(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "mona_core", "worker", "--queues", "gpu,cpu", "--concurrency", "1"]
        with (self.settings.data_dir / "worker.log").open("ab") as log:
            return subprocess.Popen(
                command,
                env=worker_environment(self.settings),
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )

    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            started = time.monotonic()
            ended = self._run_child()
            if self._stop.is_set():
                break
            delay = self.backoff[0] if time.monotonic() - started > 60 else delay
            logger.warning("worker %s; restarting in %.0f s (restart %d)", ended, delay, self.restarts + 1)
            self.restarts += 1
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])
        self._terminate()

    def _run_child(self) -> str:
        """Start a worker and wait until it exits or ``stop``; returns how it ended, for the log."""
        try:
            process = self.process = self._spawn()
        except OSError as exc:
            return f"could not start ({exc})"
        finally:
            self._started.set()
        while process.poll() is None and not self._stop.wait(0.5):
            pass
        if process.returncode is not None:
            _kill_group(process.pid, signal.SIGKILL)  # pool processes left by a killed main process
        return f"pid {process.pid} exited with status {process.returncode}"

    def _terminate(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        _kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextmanager
def running_worker(settings: Settings) -> Iterator[WorkerSupervisor]:
    """A supervised ``mona worker`` child for the lifetime of the block."""
    supervisor = WorkerSupervisor(settings).start()
    try:
        yield supervisor
    finally:
        supervisor.stop()


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
    if settings.embedded_broker:
        try:
            acquire_worker_lock(settings.data_dir).close()  # refuse early: another worker runs on this data dir
        except WorkerLocked as exc:
            logger.error("refusing to start: %s", exc)
            return LOCKED_EXIT
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
    origin = f"kept in {settings.data_dir / KEY_FILE}" if generated else "from --api-key / MONA_API_KEY"
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
