"""``mona worker --ping``, the container healthcheck: 0 while a worker on this host answers, 1 once it is gone."""

from __future__ import annotations

import subprocess
import sys

from services.common.settings import Settings
from tests.services.conftest import REPO, WorkerProcess, settings_env, wait_for


def _ping(settings: Settings) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mona_core", "worker", "--ping", "--ping-timeout", "2"]
    return subprocess.run(command, env=settings_env(settings), cwd=REPO, capture_output=True, text=True, timeout=120)


def test_ping_answers_while_the_worker_lives(service_settings: Settings, worker: WorkerProcess) -> None:
    wait_for(lambda: _ping(service_settings).returncode == 0, 90, interval=1, what="the worker to answer a ping")
    worker.stop()
    gone = _ping(service_settings)
    assert gone.returncode == 1, gone.stderr
    assert "expected" in gone.stderr, gone.stderr
