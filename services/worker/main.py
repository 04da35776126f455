"""``mona worker``: a Celery worker (prefork pool) on the job queues, started programmatically.

Migrations are not run here: the API's prestart (or ``mona db upgrade``) owns the schema. Gossip and mingle are
off (workers need not know each other: the database is the source of truth for jobs). With the embedded
filesystem broker, broker heartbeats are off too (that transport has none).
"""

from __future__ import annotations

import logging
import os
import socket

from services.common.settings import Settings, get_settings
from services.worker.lock import LOCKED_EXIT, WorkerLocked, acquire_worker_lock

logger = logging.getLogger(__name__)


def worker_argv(settings: Settings, queues: str | None, concurrency: int) -> list[str]:
    """The ``celery worker`` command line for ``queues`` (default: ``MONA_WORKER_QUEUES``) and ``concurrency``."""
    if concurrency < 1:
        raise ValueError(f"expected a concurrency of at least 1, got {concurrency}")
    argv = [
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "-Q",
        queues or settings.worker_queues,
        "--hostname",
        f"mona-{os.getpid()}@{socket.gethostname()}",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        settings.log_level.upper(),
    ]
    if settings.embedded_broker:
        argv.append("--without-heartbeat")
    return argv


def ping_local_worker(timeout: float) -> bool:
    """Whether a worker on this host (``mona-<pid>@<hostname>``) answers a Celery control ping within ``timeout``
    seconds: the container healthcheck. The embedded broker has no remote control, so there it is the data
    directory's worker lock that tells."""
    settings = get_settings()
    if settings.embedded_broker:
        from services.common.probes import NoWorker, ping_embedded_worker

        try:
            ping_embedded_worker(settings)
        except NoWorker as exc:
            logger.error("%s", exc)
            return False
        return True
    from services.common.tasks import make_celery

    suffix = f"@{socket.gethostname()}"
    replies = make_celery(settings).control.ping(timeout=timeout)
    answered = sorted(name for reply in replies for name in reply if name.endswith(suffix))
    if not answered:
        logger.error("expected a worker on %s to answer a ping within %.0f s, got none", suffix[1:], timeout)
    return bool(answered)


def run_worker(queues: str | None, concurrency: int) -> int:
    """Run the worker until it is stopped; returns its exit code (``LOCKED_EXIT`` when the data directory's
    worker lock is held by another worker on the embedded broker)."""
    settings = get_settings()
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        lock = acquire_worker_lock(settings.data_dir) if settings.embedded_broker else None
    except WorkerLocked as exc:
        logger.error("refusing to start: %s", exc)
        return LOCKED_EXIT
    from services.worker.app import app

    argv = worker_argv(settings, queues, concurrency)
    logger.info("starting worker: celery %s", " ".join(argv))
    try:
        code = app.start(argv=argv)
    finally:
        if lock is not None:
            lock.close()
    return int(code or 0)
