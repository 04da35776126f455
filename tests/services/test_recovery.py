"""Claims, leases and recovery: a job is never run twice at once, and a killed worker's job resumes elsewhere."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from mona_core.training.config import TrainConfig
from services.common.db import session_scope
from services.common.jobs import as_utc, claim_job
from services.common.models import TERMINAL, JobStatus, Report, TrainingJob, utcnow
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.common.tasks import make_celery, send_train
from services.worker.evaluation import ReportLease, run_evaluation
from services.worker.recovery import MAX_ATTEMPTS, recover_stale_jobs, recover_stale_reports
from services.worker.training import LOST, run_training_job
from tests.services import test_worker
from tests.services.conftest import WorkerProcess, wait_for
from tests.services.test_worker import load_job, log_lines, make_dataset, make_job, metric_rows, purge_job_queues

HOUR_AGO = timedelta(hours=1)
trained_job = test_worker.trained_job  # the fixture: (dataset id, id of a job trained to success)


@pytest.fixture()
def retire(service_settings: Settings) -> Iterator[list[str]]:
    """Ids of jobs a test leaves running or queued on purpose; cancelled afterwards, so that no later test's
    worker (on the shared CI database and broker) recovers and runs them."""
    ids: list[str] = []
    yield ids
    with session_scope(service_settings.sqlalchemy_url) as session:
        statement = update(TrainingJob).where(TrainingJob.id.in_(ids), TrainingJob.status.in_(["queued", "running"]))
        session.execute(statement.values(status="cancelled", finished_at=utcnow()))


def _set(settings: Settings, job_id: str, **values: object) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get_one(TrainingJob, job_id)
        for name, value in values.items():
            setattr(job, name, value)


def _running_job(settings: Settings, tmp_path: Path, heartbeat_age: timedelta, attempts: int = 1) -> str:
    job_id = make_job(settings, make_dataset(settings, tmp_path, patients=2, frames=1))
    _set(settings, job_id, status="running", worker="gone:1", attempts=attempts, heartbeat_at=utcnow() - heartbeat_age)
    return job_id


def test_claim_is_exclusive_until_the_heartbeat_is_stale(
    service_settings: Settings, tmp_path: Path, retire: list[str]
) -> None:
    job_id = make_job(service_settings, make_dataset(service_settings, tmp_path, patients=2, frames=1))
    retire.append(job_id)
    url, stale = service_settings.sqlalchemy_url, service_settings.stale_job_seconds
    with session_scope(url) as session:
        assert claim_job(session, job_id, "a:1", stale)
    with session_scope(url) as session:
        assert not claim_job(session, job_id, "b:2", stale)
    first = load_job(service_settings, job_id)
    _set(service_settings, job_id, heartbeat_at=utcnow() - HOUR_AGO)
    with session_scope(url) as session:
        assert claim_job(session, job_id, "b:2", stale)
    job = load_job(service_settings, job_id)
    assert (job.status, job.worker, job.attempts, job.started_at) == ("running", "b:2", 2, first.started_at)


def test_recovery_requeues_and_resends_only_stale_jobs(
    service_settings: Settings, tmp_path: Path, retire: list[str]
) -> None:
    stale_id = _running_job(service_settings, tmp_path, HOUR_AGO)
    fresh_id = _running_job(service_settings, tmp_path, timedelta(seconds=0))
    retire.extend([stale_id, fresh_id])
    sent: list[str] = []
    assert stale_id in recover_stale_jobs(service_settings, sent.append)
    assert stale_id in sent and fresh_id not in sent
    job = load_job(service_settings, stale_id)
    assert (job.status, job.worker, job.attempts) == ("queued", None, 1)
    assert any(
        level == "WARNING" and "requeued after a lost worker" in m for level, m in log_lines(service_settings, stale_id)
    )
    assert load_job(service_settings, fresh_id).status == "running"
    assert stale_id not in recover_stale_jobs(service_settings, sent.append)


def test_a_job_that_keeps_losing_its_worker_fails(
    service_settings: Settings, tmp_path: Path, retire: list[str]
) -> None:
    job_id = _running_job(service_settings, tmp_path, HOUR_AGO, attempts=MAX_ATTEMPTS)
    retire.append(job_id)
    sent: list[str] = []
    assert job_id not in recover_stale_jobs(service_settings, sent.append)
    job = load_job(service_settings, job_id)
    assert job.status == "failed" and job.error is not None and job.error.startswith("WorkerLost:")
    assert job_id not in sent


def test_a_worker_that_lost_its_claim_stops_and_leaves_the_job(
    service_settings: Settings, tmp_path: Path, retire: list[str]
) -> None:
    long_run = TrainConfig(iterations=2000, size=32, batch_size=2, val_every=1000, checkpoint_every=1000, device="cpu")
    job_id = make_job(service_settings, make_dataset(service_settings, tmp_path, patients=2, frames=1), long_run)
    retire.append(job_id)

    def take_over() -> None:
        wait_for(lambda: load_job(service_settings, job_id).iteration >= 2, timeout=60, interval=0.1)
        _set(service_settings, job_id, worker="thief:1", heartbeat_at=utcnow())

    thief = threading.Thread(target=take_over)
    thief.start()
    assert run_training_job(service_settings, job_id) == LOST
    thief.join()
    job = load_job(service_settings, job_id)
    assert (job.status, job.worker, job.finished_at) == ("running", "thief:1", None)


def test_a_killed_worker_job_resumes_from_its_checkpoint(
    service_settings: Settings, tmp_path: Path, retire: list[str], record_property: Callable[[str, object], None]
) -> None:
    settings = service_settings.model_copy(update={"stale_job_seconds": 3.0})
    config = TrainConfig(
        iterations=150, size=32, batch_size=2, val_every=50, checkpoint_every=5, log_every=1, device="cpu"
    )
    job_id = make_job(settings, make_dataset(settings, tmp_path, patients=3, frames=1), config)
    retire.append(job_id)
    last = ArtifactStore(settings.artifact_root).run_dir(job_id) / "checkpoints" / "last.pt"
    purge_job_queues(settings)
    first = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    try:
        send_train(make_celery(settings), job_id)
        wait_for(lambda: load_job(settings, job_id).iteration >= 10 and last.is_file(), 120, 0.1, "training")
    finally:
        first.kill()
    killed_at = time.monotonic()
    crashed = load_job(settings, job_id)
    assert (crashed.status, crashed.attempts) == ("running", 1) and crashed.iteration < 150
    second = WorkerProcess(settings, tmp_path / "worker-2.log").start()
    try:
        wait_for(lambda: load_job(settings, job_id).status in TERMINAL, 180, 0.5, "the resumed job")
    finally:
        second.stop()
    job = load_job(settings, job_id)
    assert (job.status, job.attempts, job.error) == (JobStatus.SUCCEEDED.value, 2, None), second.log.read_text()[-3000:]
    record_property("worker killed mid-job: jobs lost", int(job.status != JobStatus.SUCCEEDED.value))
    record_property(
        "worker killed mid-job: seconds from the kill to the job succeeded", round(time.monotonic() - killed_at, 1)
    )
    messages = [message for _, message in log_lines(settings, job_id)]
    assert any("requeued after a lost worker" in message for message in messages)
    assert any(message.startswith("resuming from step") for message in messages)
    rows = metric_rows(settings, job_id)
    resumed = [row["step"] for row in rows if row["attempt"] == 2]
    assert resumed[0] > 5 and resumed[-1] == 150
    assert [row["step"] for row in rows] == list(range(1, 151))  # the lost attempt's unsaved steps were dropped
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.scalar(select(TrainingJob.model_id).where(TrainingJob.id == job_id)) is not None


def _evaluation(settings: Settings, trained: tuple[str, str], **values: object) -> str:
    dataset_id, job_id = trained
    with session_scope(settings.sqlalchemy_url) as session:
        model_id = session.get_one(TrainingJob, job_id).model_id
        assert model_id is not None
        report = Report(source="evaluation", model_id=model_id, dataset_id=dataset_id, split="val", **values)
        session.add(report)
        session.flush()
        return report.id


def _report(settings: Settings, report_id: str) -> Report:
    with session_scope(settings.sqlalchemy_url) as session:
        return session.get_one(Report, report_id)


def _beat_within(settings: Settings, report_id: str, age: timedelta) -> bool:
    beat = as_utc(_report(settings, report_id).heartbeat_at)
    return beat is not None and beat > utcnow() - age


def test_a_lost_evaluation_is_requeued_and_finished_by_the_next_worker(
    service_settings: Settings, trained_job: tuple[str, str]
) -> None:
    report_id = _evaluation(
        service_settings, trained_job, status="running", attempts=1, heartbeat_at=utcnow() - HOUR_AGO
    )
    sent: list[str] = []
    assert recover_stale_reports(service_settings, sent.append) == [report_id] == sent
    assert (_report(service_settings, report_id).status, _report(service_settings, report_id).attempts) == ("queued", 1)
    assert recover_stale_reports(service_settings, sent.append) == []  # queued now: nothing stale
    assert run_evaluation(service_settings, report_id) == "succeeded"
    done = _report(service_settings, report_id)
    assert (done.status, done.attempts, done.progress) == ("succeeded", 2, 1.0) and done.summary is not None


def test_a_running_evaluation_with_a_fresh_heartbeat_is_left_alone(
    service_settings: Settings, trained_job: tuple[str, str]
) -> None:
    report_id = _evaluation(service_settings, trained_job, status="running", attempts=1, heartbeat_at=utcnow())
    assert run_evaluation(service_settings, report_id) == "skipped"  # another worker owns it
    assert recover_stale_reports(service_settings, lambda _: None) == []
    with ReportLease(service_settings.sqlalchemy_url, report_id, interval=0.05):
        with session_scope(service_settings.sqlalchemy_url) as session:
            session.get_one(Report, report_id).heartbeat_at = utcnow() - HOUR_AGO
        wait_for(lambda: _beat_within(service_settings, report_id, HOUR_AGO / 2), 10, what="a heartbeat")
    with session_scope(service_settings.sqlalchemy_url) as session:
        session.get_one(Report, report_id).status = "failed"  # leave nothing running for later tests' workers


def test_an_evaluation_that_keeps_losing_its_worker_fails(
    service_settings: Settings, trained_job: tuple[str, str]
) -> None:
    report_id = _evaluation(
        service_settings, trained_job, status="running", attempts=MAX_ATTEMPTS, heartbeat_at=utcnow() - HOUR_AGO
    )
    assert recover_stale_reports(service_settings, lambda _: None) == []
    failed = _report(service_settings, report_id)
    assert failed.status == "failed" and failed.error is not None and failed.error.startswith("WorkerLost")
    assert failed.finished_at is not None
