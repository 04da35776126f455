"""Liveness of training jobs and evaluations: the lease a running job keeps, and the recovery of work whose worker
died.

While a worker runs a job, ``JobLease`` beats the job's heartbeat from a daemon thread (every stage: loading,
training, export) and reads its cancel flag, about once a second. A worker killed mid-job (SIGKILL, OOM, a lost
machine) stops beating; ``recover_stale_jobs`` finds running jobs whose heartbeat is older than
``stale_job_seconds``, puts them back in the queue and sends ``mona.train`` again. The resumed task continues
from the job's ``last.pt``. Each worker main process runs recovery once when it is ready and then every
``max(5, stale_job_seconds / 2)`` seconds (``RecoveryLoop``); the ``mona.recover`` task runs one pass on demand.
A job that lost its worker ``MAX_ATTEMPTS`` times is failed instead of retried forever. Evaluation reports follow the
same rules (``recover_stale_reports``; their lease is ``services.worker.evaluation.ReportLease``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common.db import make_engine, session_scope
from services.common.jobs import StaleJob, append_log, fail_stale, heartbeat, is_cancel_requested, requeue
from services.common.jobs import stale_running_jobs as find_stale
from services.common.reports import beat_report, fail_stale_report, requeue_report, stale_running_reports
from services.common.settings import Settings
from services.common.tasks import make_celery, send_evaluate, send_train

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""A job whose worker was lost this many times is failed, not requeued (it may be what kills the worker)."""

Sender = Callable[[str], None]


def lease_interval(stale_seconds: float) -> float:
    """Heartbeat period: a third of the staleness threshold, between 0.2 s and 1 s."""
    return max(0.2, min(1.0, stale_seconds / 3))


def recovery_interval(stale_seconds: float) -> float:
    return max(5.0, stale_seconds / 2)


class _Lease:
    """A context manager whose daemon thread calls ``check`` every ``interval`` seconds while the block runs."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    def check(self) -> None:
        raise NotImplementedError


class JobLease(_Lease):
    """Keeps a claimed job's heartbeat fresh and watches for cancel or a lost claim."""

    def __init__(self, url: str, job_id: str, worker: str, interval: float) -> None:
        super().__init__(f"lease-{job_id[:8]}", interval)
        self.url, self.job_id, self.worker = url, job_id, worker
        self.lost = False
        self.cancel_requested = False

    def check(self) -> None:
        """Beat the heartbeat and read the cancel flag; a database hiccup is retried on the next beat."""
        try:
            with session_scope(self.url) as session:
                owned = heartbeat(session, self.job_id, self.worker)
                cancel = is_cancel_requested(session, self.job_id)
        except SQLAlchemyError as exc:
            logger.warning("heartbeat of job %s failed (retrying): %s", self.job_id, exc)
            return
        if not owned and not self.lost:
            logger.warning("job %s is no longer running on %s: stopping", self.job_id, self.worker)
        self.lost, self.cancel_requested = not owned, cancel

    def should_stop(self) -> bool:
        """``train``'s stop hook: a flag read, no database work on the training thread."""
        return self.lost or self.cancel_requested


class ReportLease(_Lease):
    """Keeps a running evaluation's heartbeat fresh, so that recovery can tell a lost worker."""

    def __init__(self, url: str, report_id: str, interval: float) -> None:
        super().__init__(f"report-lease-{report_id[:8]}", interval)
        self.url, self.report_id = url, report_id

    def check(self) -> None:
        try:
            with session_scope(self.url) as session:
                beat_report(session, self.report_id)
        except SQLAlchemyError as exc:
            logger.warning("heartbeat of report %s failed (retrying): %s", self.report_id, exc)


@contextmanager
def _session(settings: Settings, engine: Engine | None) -> Iterator[Session]:
    if engine is None:
        with session_scope(settings.sqlalchemy_url) as session:
            yield session
        return
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def recover_stale_jobs(settings: Settings, send: Sender | None = None, engine: Engine | None = None) -> list[str]:
    """Requeue and re-send every running job whose heartbeat is stale; returns the ids sent again."""
    with _session(settings, engine) as session:
        stale = find_stale(session, settings.stale_job_seconds)
    requeued = [job.id for job in stale if _requeue_one(settings, job, engine)]
    if requeued:
        sender = send or _celery_senders(settings)[0]
        for job_id in requeued:
            sender(job_id)
        logger.info("requeued %d job(s) after a lost worker: %s", len(requeued), requeued)
    return requeued


def _requeue_one(settings: Settings, job: StaleJob, engine: Engine | None) -> bool:
    beat = job.heartbeat_at.isoformat() if job.heartbeat_at else "never"
    with _session(settings, engine) as session:
        if job.attempts >= MAX_ATTEMPTS:
            reason = f"WorkerLost: the worker running this job was lost {job.attempts} times (last heartbeat {beat})"
            fail_stale(session, job.id, settings.stale_job_seconds, reason)
            return False
        if not requeue(session, job.id, settings.stale_job_seconds):
            return False
        message = f"requeued after a lost worker (last heartbeat {beat} from {job.worker}, attempt {job.attempts})"
        append_log(session, job.id, message, level="WARNING")
    return True


def recover_stale_reports(settings: Settings, send: Sender, engine: Engine | None = None) -> list[str]:
    """Requeue and re-send every running evaluation whose heartbeat is stale (fail it after ``MAX_ATTEMPTS``)."""
    with _session(settings, engine) as session:
        stale = stale_running_reports(session, settings.stale_job_seconds)
    requeued = []
    for report in stale:
        beat = report.heartbeat_at.isoformat() if report.heartbeat_at else "never"
        with _session(settings, engine) as session:
            if report.attempts >= MAX_ATTEMPTS:
                reason = f"WorkerLost: the worker evaluating this report was lost {report.attempts} times (last {beat})"
                fail_stale_report(session, report.id, settings.stale_job_seconds, reason)
            elif requeue_report(session, report.id, settings.stale_job_seconds):
                requeued.append(report.id)
    for report_id in requeued:
        send(report_id)
    if requeued:
        logger.info("requeued %d evaluation(s) after a lost worker: %s", len(requeued), requeued)
    return requeued


def _celery_senders(settings: Settings) -> tuple[Sender, Sender]:
    """Re-send a training job, re-send an evaluation: one Celery app for both."""
    app = make_celery(settings, name="mona-recovery")
    return (lambda job_id: send_train(app, job_id)), (lambda report_id: send_evaluate(app, report_id))


class RecoveryLoop:
    """A daemon thread in the worker main process: one recovery pass now, then one every ``interval`` seconds.

    It owns a private engine, disposed after each pass, so no pooled connection is inherited by a forked pool
    process (``forget_in_child`` drops any that a fork caught mid-pass without closing the parent's socket).
    """

    def __init__(self, settings: Settings, interval: float | None = None) -> None:
        self.settings = settings
        self.interval = interval if interval is not None else recovery_interval(settings.stale_job_seconds)
        self._engine = make_engine(settings.sqlalchemy_url)
        self._senders: tuple[Sender, Sender] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mona-recovery", daemon=True)

    def start(self) -> RecoveryLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        self.run_once()
        while not self._stop.wait(self.interval):
            self.run_once()

    def run_once(self) -> list[str]:
        """One pass over training jobs and evaluation reports; returns the ids sent again."""
        try:
            self._senders = self._senders or _celery_senders(self.settings)
            jobs = recover_stale_jobs(self.settings, self._senders[0], self._engine)
            return jobs + recover_stale_reports(self.settings, self._senders[1], self._engine)
        except Exception:
            logger.exception("recovery pass failed (retrying in %.0f s)", self.interval)
            return []
        finally:
            self._engine.dispose()

    def forget_in_child(self) -> None:
        self._engine.dispose(close=False)


class _Loops:
    current: RecoveryLoop | None = None


def start_recovery_loop(settings: Settings) -> RecoveryLoop:
    """Start (once per process) the periodic recovery thread; called on Celery's ``worker_ready``."""
    if _Loops.current is None:
        _Loops.current = RecoveryLoop(settings).start()
        logger.info("recovery loop started: every %.0f s", _Loops.current.interval)
    return _Loops.current


def stop_recovery_loop(**_: Any) -> None:
    if _Loops.current is not None:
        _Loops.current.stop()
        _Loops.current = None


def forget_recovery_engine(**_: Any) -> None:
    """``worker_process_init``: a forked pool process must not reuse or close the parent's connections."""
    logger.debug("pool process %d started", os.getpid())
    if _Loops.current is not None:
        _Loops.current.forget_in_child()
