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

A *queued* job or evaluation can lose its message instead (Redis restarted without persistence, flushed, failed
over): nothing would ever claim it. ``recover_lost_messages`` re-sends every one queued for longer than
``requeue_queued_seconds`` whose id appears in no message waiting on the broker or delivered but unacknowledged.
A duplicate is harmless: the claim is one conditional ``UPDATE`` (queued, or running with a stale heartbeat), so
the second delivery finds the job running or finished and does nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from services.common.db import DbTimeouts, make_engine, session_scope
from services.common.jobs import (
    StaleJob,
    append_log,
    fail_stale,
    heartbeat,
    is_cancel_requested,
    requeue,
    waiting_jobs,
)
from services.common.jobs import stale_running_jobs as find_stale
from services.common.reports import (
    beat_report,
    fail_stale_report,
    report_queue,
    requeue_report,
    stale_running_reports,
    waiting_reports,
)
from services.common.settings import Settings
from services.common.tasks import make_celery, messages_on_broker, send_evaluate, send_train
from services.common.webhooks import notify_job_finished
from services.worker.retention import apply_retention

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""A job whose worker was lost this many times is failed, not requeued (it may be what kills the worker)."""

Sender = Callable[[str], None]


@dataclass(frozen=True)
class Dispatch:
    """How recovery reaches the broker: re-send a training job, re-send an evaluation, read the pending messages
    (their raw text, or None when the transport cannot be read)."""

    train: Sender
    evaluate: Sender
    pending: Callable[[], str | None]


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
        sender = send or _dispatch(settings).train
        for job_id in requeued:
            sender(job_id)
        logger.info("requeued %d job(s) after a lost worker: %s", len(requeued), requeued)
    return requeued


def _requeue_one(settings: Settings, job: StaleJob, engine: Engine | None) -> bool:
    beat = job.heartbeat_at.isoformat() if job.heartbeat_at else "never"
    with _session(settings, engine) as session:
        if job.attempts >= MAX_ATTEMPTS:
            reason = f"WorkerLost: the worker running this job was lost {job.attempts} times (last heartbeat {beat})"
            failed = fail_stale(session, job.id, settings.stale_job_seconds, reason)
        elif not requeue(session, job.id, settings.stale_job_seconds):
            return False
        else:
            message = f"requeued after a lost worker (last heartbeat {beat} from {job.worker}, attempt {job.attempts})"
            append_log(session, job.id, message, level="WARNING")
            return True
    if failed:
        notify_job_finished(settings, job.id)
    return False


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


def recover_lost_messages(
    settings: Settings, dispatch: Dispatch | None = None, engine: Engine | None = None
) -> list[str]:
    """Re-send every job and evaluation queued for over ``requeue_queued_seconds`` whose message the broker no
    longer holds; returns the ids sent again. A broker that cannot be read (neither Redis nor the embedded one)
    gets nothing: re-sending blindly would add a copy per pass to every job waiting behind a long one."""
    with _session(settings, engine) as session:
        jobs = waiting_jobs(session, settings.requeue_queued_seconds)
        reports = waiting_reports(session, settings.requeue_queued_seconds)
    if not jobs and not reports:
        return []
    dispatch = dispatch or _dispatch(settings)
    pending = dispatch.pending()
    if pending is None:
        logger.warning("%d queued job(s)/evaluation(s) wait long, but this broker cannot be read", len(jobs + reports))
        return []
    lost_jobs = [job_id for job_id in jobs if job_id not in pending]
    lost_reports = [report_id for report_id in reports if report_id not in pending]
    for job_id in lost_jobs:
        dispatch.train(job_id)
        _note_resent(settings, engine, job_id)
    for report_id in lost_reports:
        dispatch.evaluate(report_id)
    if lost_jobs or lost_reports:
        logger.warning(
            "re-sent %d job(s) and %d evaluation(s) whose message was lost", len(lost_jobs), len(lost_reports)
        )
    return lost_jobs + lost_reports


def _note_resent(settings: Settings, engine: Engine | None, job_id: str) -> None:
    wait = settings.requeue_queued_seconds
    with _session(settings, engine) as session:
        append_log(session, job_id, f"re-sent: queued for over {wait:.0f} s with no message on the broker", "WARNING")


def _dispatch(settings: Settings) -> Dispatch:
    """One Celery app for re-sending training jobs and evaluations and for reading the broker's messages."""
    app = make_celery(settings, name="mona-recovery")
    return Dispatch(
        train=lambda job_id: send_train(app, job_id),
        evaluate=lambda report_id: send_evaluate(app, report_id, _queue_of(settings, report_id)),
        pending=lambda: messages_on_broker(app, settings),
    )


def _queue_of(settings: Settings, report_id: str) -> str | None:
    with _session(settings, None) as session:
        return report_queue(session, report_id)


class RecoveryLoop:
    """A daemon thread in the worker main process: one recovery pass now, then one every ``interval`` seconds.

    It owns a private engine, disposed after each pass, so no pooled connection is inherited by a forked pool
    process (``forget_in_child`` drops any that a fork caught mid-pass without closing the parent's socket).
    """

    def __init__(self, settings: Settings, interval: float | None = None) -> None:
        self.settings = settings
        self.interval = interval if interval is not None else recovery_interval(settings.stale_job_seconds)
        self._engine = make_engine(settings.sqlalchemy_url, DbTimeouts.from_settings(settings))
        self._dispatch: Dispatch | None = None
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
        """One pass over training jobs and evaluation reports (stale, then lost messages), then retention
        (``services.worker.retention``); returns the ids sent."""
        try:
            dispatch = self._dispatch = self._dispatch or _dispatch(self.settings)
            jobs = recover_stale_jobs(self.settings, dispatch.train, self._engine)
            reports = recover_stale_reports(self.settings, dispatch.evaluate, self._engine)
            sent = jobs + reports + recover_lost_messages(self.settings, dispatch, self._engine)
            apply_retention(self.settings, self._engine)  # errors logged inside: never block recovery
            return sent
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
