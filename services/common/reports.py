"""Evaluation-report repository for the workers: claim, heartbeat and recovery of a report being evaluated.

The same rules as training jobs (``services.common.jobs``): an evaluation is *owned* while its report is ``running``
with a heartbeat younger than ``stale_seconds``; every state change is one conditional ``UPDATE`` whose row count says
whether it happened. A worker killed mid-evaluation stops beating, and recovery puts the report back in the queue (or
fails it after too many lost workers). Functions take an open session and never commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from services.common.jobs import NO_SYNC, as_utc, rowcount
from services.common.models import Case, JobStatus, Report, utcnow

EVALUATION = "evaluation"
BATCH = "batch"
WORKER_SOURCES = (EVALUATION, BATCH)
"""Reports a worker fills (claimed, beaten, recovered): evaluations and batch segmentations."""


@dataclass(frozen=True)
class StaleReport:
    """A running evaluation whose worker stopped beating."""

    id: str
    attempts: int
    heartbeat_at: datetime | None


def _stale(stale_seconds: float) -> ColumnElement[bool]:
    cutoff = utcnow() - timedelta(seconds=stale_seconds)
    return and_(
        Report.source.in_(WORKER_SOURCES),
        Report.status == JobStatus.RUNNING.value,
        or_(Report.heartbeat_at.is_(None), Report.heartbeat_at < cutoff),
    )


def claim_report(session: Session, report_id: str, stale_seconds: float) -> bool:
    """Start (or retry) an evaluation: not when it succeeded, nor while another worker's heartbeat is fresh."""
    claimable = or_(
        Report.status.in_([JobStatus.QUEUED.value, JobStatus.FAILED.value]),
        _stale(stale_seconds),
    )
    statement = (
        update(Report)
        .where(Report.id == report_id, Report.source.in_(WORKER_SOURCES), claimable)
        .values(
            status=JobStatus.RUNNING.value,
            progress=0.0,
            error=None,
            finished_at=None,
            attempts=Report.attempts + 1,
            heartbeat_at=utcnow(),
        )
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def beat_report(session: Session, report_id: str) -> bool:
    """Refresh a running evaluation's heartbeat; False when the report is no longer running."""
    statement = (
        update(Report)
        .where(Report.id == report_id, Report.status == JobStatus.RUNNING.value)
        .values(heartbeat_at=utcnow())
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def stale_running_reports(session: Session, stale_seconds: float) -> list[StaleReport]:
    rows = session.execute(
        select(Report.id, Report.attempts, Report.heartbeat_at).where(_stale(stale_seconds)).order_by(Report.created_at)
    )
    return [StaleReport(row[0], row[1], as_utc(row[2])) for row in rows]


def waiting_reports(session: Session, older_than_s: float) -> list[str]:
    """Ids of evaluations queued (never claimed, or requeued) and created more than ``older_than_s`` seconds ago."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    statement = select(Report.id).where(
        Report.source.in_(WORKER_SOURCES), Report.status == JobStatus.QUEUED.value, Report.created_at < cutoff
    )
    return list(session.scalars(statement.order_by(Report.created_at)))


def requeue_report(session: Session, report_id: str, stale_seconds: float) -> bool:
    """Put a stale evaluation back in the queue (attempts kept); False when it is no longer stale."""
    statement = (
        update(Report)
        .where(Report.id == report_id, _stale(stale_seconds))
        .values(status=JobStatus.QUEUED.value, progress=0.0)
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def report_queue(session: Session, report_id: str) -> str | None:
    """The worker queue a report's task goes to (None: the default, gpu)."""
    return session.scalar(select(Report.queue).where(Report.id == report_id))


def fail_stale_report(session: Session, report_id: str, stale_seconds: float, error: str) -> bool:
    statement = (
        update(Report)
        .where(Report.id == report_id, _stale(stale_seconds))
        .values(status=JobStatus.FAILED.value, error=error, finished_at=utcnow())
        .execution_options(**NO_SYNC)
    )
    return rowcount(session.execute(statement)) == 1


def batch_cases(session: Session, report: Report) -> list[Case]:
    """The cases a batch segments, in case-id order: its ``case_ids``, else every case of its split."""
    query = select(Case).where(Case.dataset_id == report.dataset_id).order_by(Case.case_id)
    if report.case_ids is not None:
        query = query.where(Case.case_id.in_([str(case_id) for case_id in report.case_ids]))
    else:
        query = query.where(Case.split == report.split)
    return list(session.scalars(query))
