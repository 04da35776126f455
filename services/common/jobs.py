"""Training-job repository shared by the API and the workers: claims, progress, logs, terminal states, recovery.

A job is *owned* by the worker named in ``jobs.worker`` while its status is ``running`` and its heartbeat is fresh
(younger than ``stale_seconds``). Every state change is one conditional ``UPDATE`` whose row count says whether it
happened, so two workers (or a worker and the recovery loop) can never both win: claiming needs the job queued or
its heartbeat stale, and a worker's writes name the worker, so a worker that lost its claim stops writing.
Functions here take an open session and never commit; the caller's ``session_scope`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from services.common.models import JobLog, JobMetric, JobStatus, TrainingJob, utcnow

NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class StaleJob:
    """A running job whose worker stopped beating: what recovery needs to decide and to log."""

    id: str
    attempts: int
    worker: str | None
    heartbeat_at: datetime | None


def rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _stale(stale_seconds: float, now: datetime) -> ColumnElement[bool]:
    cutoff = now - timedelta(seconds=stale_seconds)
    return and_(
        TrainingJob.status == JobStatus.RUNNING.value,
        or_(TrainingJob.heartbeat_at.is_(None), TrainingJob.heartbeat_at < cutoff),
    )


def _owned(job_id: str, worker: str | None) -> ColumnElement[bool]:
    """The job is running, and (when ``worker`` is given) by that worker."""
    running = and_(TrainingJob.id == job_id, TrainingJob.status == JobStatus.RUNNING.value)
    return running if worker is None else and_(running, TrainingJob.worker == worker)


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time written by the service is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def claim_job(session: Session, job_id: str, worker: str, stale_seconds: float) -> bool:
    """Atomically take a queued job, or a running one whose worker stopped beating; False when not claimable.

    The claim counts an attempt, names the worker, beats the heartbeat and keeps the first ``started_at``.
    """
    now = utcnow()
    claimable = or_(TrainingJob.status == JobStatus.QUEUED.value, _stale(stale_seconds, now))
    statement = (
        update(TrainingJob)
        .where(TrainingJob.id == job_id, claimable)
        .values(
            status=JobStatus.RUNNING.value,
            stage="loading",
            attempts=TrainingJob.attempts + 1,
            worker=worker,
            started_at=func.coalesce(TrainingJob.started_at, now),
            heartbeat_at=now,
            error=None,
            finished_at=None,
        )
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def record_progress(session: Session, job_id: str, worker: str | None, values: Mapping[str, Any]) -> bool:
    """Write status fields (stage, progress, iteration, ...) and beat the heartbeat; False if not ours any more."""
    statement = (
        update(TrainingJob)
        .where(_owned(job_id, worker))
        .values(**dict(values), heartbeat_at=utcnow())
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def heartbeat(session: Session, job_id: str, worker: str) -> bool:
    """Beat the heartbeat of a job ``worker`` owns; False when it no longer does (requeued, finished, taken)."""
    return record_progress(session, job_id, worker, {})


def add_metric(session: Session, job_id: str, step: int, values: Mapping[str, Any]) -> None:
    session.add(JobMetric(job_id=job_id, step=step, values=dict(values)))


def prune_metrics(session: Session, job_id: str, after_step: int) -> int:
    """Drop metric rows past ``after_step`` (a lost attempt's steps that a resumed run redoes); returns the count."""
    statement = delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > after_step)
    return rowcount(session.execute(statement.execution_options(**NO_SYNC)))


def append_log(session: Session, job_id: str, message: str, level: str = "INFO") -> None:
    session.add(JobLog(job_id=job_id, level=level, message=message))


def finish_job(session: Session, job_id: str, worker: str | None, status: JobStatus, **values: Any) -> bool:
    """Move a running job to a terminal ``status`` (with ``finished_at``); False when it was not running (ours)."""
    fields = {"status": status.value, "finished_at": utcnow(), "eta_s": None, **values}
    return record_progress(session, job_id, worker, fields)


def fail_job(session: Session, job_id: str, worker: str | None, error: str) -> bool:
    """Mark a running job failed with ``error`` and an ERROR log line; False when it was not running (ours)."""
    failed = finish_job(session, job_id, worker, JobStatus.FAILED, error=error)
    if failed:
        append_log(session, job_id, error, level="ERROR")
    return failed


def is_cancel_requested(session: Session, job_id: str) -> bool:
    flag = session.scalar(select(TrainingJob.cancel_requested).where(TrainingJob.id == job_id))
    return bool(flag)


def stale_running_jobs(session: Session, stale_seconds: float) -> list[StaleJob]:
    """Running jobs whose heartbeat is older than ``stale_seconds`` (their worker died or hangs)."""
    columns = (TrainingJob.id, TrainingJob.attempts, TrainingJob.worker, TrainingJob.heartbeat_at)
    rows = session.execute(select(*columns).where(_stale(stale_seconds, utcnow())).order_by(TrainingJob.created_at))
    return [StaleJob(row[0], row[1], row[2], as_utc(row[3])) for row in rows]


def requeue(session: Session, job_id: str, stale_seconds: float) -> bool:
    """Put a stale running job back in the queue (attempts kept); False when it is no longer stale."""
    statement = (
        update(TrainingJob)
        .where(TrainingJob.id == job_id, _stale(stale_seconds, utcnow()))
        .values(status=JobStatus.QUEUED.value, stage="queued", worker=None, eta_s=None)
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def fail_stale(session: Session, job_id: str, stale_seconds: float, error: str) -> bool:
    """Fail a stale running job (one that lost its worker too often); False when it is no longer stale."""
    statement = (
        update(TrainingJob)
        .where(TrainingJob.id == job_id, _stale(stale_seconds, utcnow()))
        .values(status=JobStatus.FAILED.value, error=error, finished_at=utcnow(), worker=None, eta_s=None)
        .execution_options(**NO_SYNC)
    )
    failed = rowcount(session.execute(statement)) == 1
    if failed:
        append_log(session, job_id, error, level="ERROR")
    return failed


def waiting_jobs(session: Session, older_than_s: float) -> list[str]:
    """Ids of jobs queued (never claimed, or requeued) and created more than ``older_than_s`` seconds ago."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    statement = select(TrainingJob.id).where(
        TrainingJob.status == JobStatus.QUEUED.value, TrainingJob.created_at < cutoff
    )
    return list(session.scalars(statement.order_by(TrainingJob.created_at)))


def job_logs(session: Session, job_id: str) -> Sequence[JobLog]:
    return session.scalars(select(JobLog).where(JobLog.job_id == job_id).order_by(JobLog.id)).all()
