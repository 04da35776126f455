"""Readiness probes of the database and the task broker, each bounded by a timeout and silent about addresses.

A probe answers ``None`` when its part is reachable, else a short reason that names no host, port or URL (the
reason is shown to unauthenticated callers of ``/readyz``). Both run in worker threads: a hung server (SIGSTOP)
cannot hold the caller past ``timeout`` seconds, whatever the client library does.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import redis
from kombu.connection import Connection
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import pool, text
from sqlalchemy.exc import SQLAlchemyError

from services.common.db import DbTimeouts, make_engine
from services.common.settings import Settings

logger = logging.getLogger(__name__)

Probe = Callable[[], None]
OUTAGE_ERRORS = (SQLAlchemyError, redis.RedisError, BrokerError, OSError)
"""What a probe raises when its part is down, refused or hung (anything else is a bug and propagates)."""


def ping_database(settings: Settings, timeout: float) -> None:
    """``SELECT 1`` on a fresh connection (no pool: a hung pooled connection cannot be reused by a probe)."""
    timeouts = DbTimeouts(max(2, round(timeout)), timeout, timeout)
    engine = make_engine(settings.sqlalchemy_url, timeouts, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()


def ping_broker(settings: Settings, timeout: float) -> None:
    """Redis: ``PING``; the embedded broker: its folder exists; another transport: a kombu connection."""
    url = settings.broker_url
    if settings.embedded_broker:
        if not Path(settings.broker_folder).is_dir():
            raise FileNotFoundError("expected the embedded broker's folder, got none")
        return
    if url.startswith(("redis://", "rediss://", "unix://")):
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    with Connection(url, connect_timeout=timeout) as connection:  # type: ignore[no-untyped-call]
        connection.ensure_connection(max_retries=1, timeout=timeout)


class NoWorker(OSError):
    """The embedded worker is not running (its lock is not held)."""


PROC_LOCKS = Path("/proc/locks")


def ping_embedded_worker(settings: Settings) -> None:
    """The embedded worker holds an exclusive ``flock`` on ``<data dir>/worker.lock`` while it lives (released by
    the kernel however it dies): look for that lock in ``/proc/locks`` (on Linux; elsewhere, whether the pid
    written in the file is alive). Nothing is locked here, so a worker starting meanwhile is never refused."""
    path = settings.worker_lock
    try:
        info = path.stat()
    except FileNotFoundError:
        raise NoWorker("expected a running worker, got no worker lock") from None
    if PROC_LOCKS.exists():
        device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
        for line in PROC_LOCKS.read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and "WRITE" in fields and device in fields:
                return
        raise NoWorker("expected a running worker, got its lock released")
    try:
        os.kill(int(path.read_text().strip()), 0)
    except (ValueError, ProcessLookupError):
        raise NoWorker("expected a running worker, got a gone process in its lock file") from None


def check_parts(probes: dict[str, Probe], timeout: float) -> dict[str, str]:
    """Run every probe at once; ``{part: "ok" | "unavailable" | "timed out"}`` within about ``timeout`` seconds."""
    executor = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="mona-probe")
    futures = {name: executor.submit(probe) for name, probe in probes.items()}
    executor.shutdown(wait=False)
    deadline = time.monotonic() + timeout
    return {name: _outcome(name, future, deadline) for name, future in futures.items()}


def _outcome(name: str, future: Future[None], deadline: float) -> str:
    timeout = max(0.0, deadline - time.monotonic())
    try:
        future.result(timeout=timeout)
    except FutureTimeout:
        logger.warning("readiness: %s did not answer in time", name)
        return "timed out"
    except OUTAGE_ERRORS as exc:
        logger.warning("readiness: %s is unavailable: %s: %s", name, type(exc).__name__, exc)
        return "unavailable"
    return "ok"
