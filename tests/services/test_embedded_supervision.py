"""``mona serve`` supervises its worker, as a user starts it (a real ``mona serve`` process, SQLite + the local
broker): a killed worker is restarted and trains the next job; a SIGKILLed ``serve`` takes its worker down; a second
worker or ``serve`` on the same data directory is refused, naming the lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mona_client import Client
from services.embedded import free_port
from services.worker.lock import LOCK_NAME, LOCKED_EXIT
from tests.services.conftest import API_KEY, REPO, wait_for
from tests.services.test_end_to_end import TINY, _upload_phantoms


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    data_dir: Path
    base: str

    def worker_pid(self) -> int | None:
        """The pid written in the data directory's worker lock, when that process is a live child of ``serve``."""
        try:
            pid = int((self.data_dir / LOCK_NAME).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _parent_of(pid) == self.process.pid else None


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...), None for a gone process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields


def _parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _group_members(pgid: int) -> list[int]:
    pids = (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    return [pid for pid in pids if (fields := _stat(pid)) is not None and int(fields[2]) == pgid]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONA_", "DATABASE_URL", "BROKER_URL"))}
    return {**env, "OMP_NUM_THREADS": "1"}


def _start_serve(data_dir: Path, log: Path) -> Serve:
    port = free_port("127.0.0.1")
    command = [sys.executable, "-m", "mona_core", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*command, "--api-key", API_KEY], env=_env(), cwd=REPO, stdout=sink, stderr=sink, start_new_session=True
        )
    serve = Serve(process, data_dir, f"http://127.0.0.1:{port}")
    wait_for(lambda: serve.worker_pid() is not None, 90, what="serve's worker to hold the lock")
    return serve


@pytest.fixture()
def serve(tmp_path: Path) -> Iterator[Serve]:
    running = _start_serve(tmp_path / "data", tmp_path / "serve.log")
    yield running
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=60)


def _ready(serve: Serve) -> httpx.Response:
    return httpx.get(f"{serve.base}/readyz", timeout=10)


def test_a_killed_worker_is_restarted_and_trains_the_next_job(
    serve: Serve, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    first = serve.worker_pid()
    assert first is not None
    assert _ready(serve).json()["checks"] == {"database": "ok", "broker": "ok", "worker": "ok"}
    killed_at = time.monotonic()
    os.kill(first, signal.SIGKILL)
    refused: list[httpx.Response] = []
    wait_for(lambda: refused.append(_ready(serve)) or refused[-1].status_code == 503, 10, interval=0.1)
    assert refused[-1].json()["checks"] == {"database": "ok", "broker": "ok", "worker": "unavailable"}
    wait_for(lambda: serve.worker_pid() not in (None, first), 60, what="a new worker pid")
    wait_for(lambda: _ready(serve).status_code == 200, 60, interval=0.2, what="/readyz 200 with the new worker")
    record_property("mona serve worker killed: seconds to /readyz 200 again", round(time.monotonic() - killed_at, 2))
    with Client(serve.base, API_KEY, timeout=120) as client:
        dataset_id = _upload_phantoms(client, tmp_path / "phantoms")
        job = client.create_job("supervised", dataset_id, config=TINY, labelled_patients=2, device="cpu")
        assert client.wait(job["id"], timeout=240, poll=0.5, progress=False)["model_id"]
    assert "restarting in" in (tmp_path / "serve.log").read_text()


def test_a_second_worker_is_refused_and_a_killed_serve_takes_its_worker_down(serve: Serve, tmp_path: Path) -> None:
    worker = serve.worker_pid()
    assert worker is not None
    env = {**_env(), "MONA_DATA_DIR": str(serve.data_dir)}
    second = subprocess.run(
        [sys.executable, "-m", "mona_core", "worker"], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == LOCKED_EXIT and str(serve.data_dir / LOCK_NAME) in second.stderr, second.stderr
    again = [sys.executable, "-m", "mona_core", "serve", "--port", "1", "--data-dir", str(serve.data_dir)]
    refused = subprocess.run(again, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == LOCKED_EXIT and LOCK_NAME in refused.stderr, refused.stderr
    serve.process.kill()
    serve.process.wait(timeout=10)
    wait_for(lambda: not _group_members(worker), 10, interval=0.2, what="serve's worker group to be gone")
