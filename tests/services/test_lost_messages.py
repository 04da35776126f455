"""At-least-once delivery: a queued job or evaluation whose broker message was lost is sent again, and a duplicate
delivery trains once (the claim is atomic). Redis is restarted without persistence, as CI and many clusters run it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.common.db import session_scope
from services.common.models import JobLog, JobStatus, Model, Report
from services.common.settings import Settings
from services.common.tasks import make_celery, messages_on_broker, send_train
from services.worker.recovery import recover_lost_messages
from services.worker.training import SKIPPED, run_training_job
from tests.services import faults
from tests.services.conftest import WorkerProcess, wait_for
from tests.services.faults import RedisServer
from tests.services.test_worker import load_job, make_dataset, make_job

Record = Callable[[str, object], None]
fault_postgres, fault_redis, fault_settings = faults.fault_postgres, faults.fault_redis, faults.fault_settings
THRESHOLD_S = 0.5


@pytest.fixture()
def settings(fault_settings: Settings) -> Settings:
    """The fault servers' settings with a short wait before a queued job counts as lost."""
    return fault_settings.model_copy(update={"requeue_queued_seconds": THRESHOLD_S})


def on_broker(settings: Settings, row_id: str) -> bool:
    pending = messages_on_broker(make_celery(settings), settings)
    assert pending is not None, "expected a readable broker"
    return row_id in pending


def claims(settings: Settings, job_id: str) -> int:
    with session_scope(settings.sqlalchemy_url) as session:
        claimed = JobLog.message.startswith("claimed by")
        return int(session.scalar(select(func.count()).where(JobLog.job_id == job_id, claimed)) or 0)


@pytest.mark.slow
def test_a_job_whose_message_redis_lost_is_resent_and_trained_once(
    settings: Settings, fault_redis: RedisServer, tmp_path: Path, record_property: Record
) -> None:
    job_id = make_job(settings, make_dataset(settings, tmp_path, patients=3, frames=1))
    send_train(make_celery(settings), job_id)
    assert on_broker(settings, job_id)
    fault_redis.stop()
    fault_redis.start()
    assert not on_broker(settings, job_id), "expected the restart to lose the message"
    assert recover_lost_messages(settings) == [], "expected no re-send before the threshold"
    time.sleep(THRESHOLD_S)
    assert recover_lost_messages(settings) == [job_id]
    assert on_broker(settings, job_id)
    assert recover_lost_messages(settings) == [], "expected no second copy while the message waits"
    send_train(make_celery(settings), job_id)  # a duplicate delivery on purpose
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        wait_for(lambda: load_job(settings, job_id).status in ("succeeded", "failed"), timeout=180, what="the job")
        wait_for(lambda: not on_broker(settings, job_id), timeout=60, what="the duplicate to be consumed")
    finally:
        worker.stop()
    job, log = load_job(settings, job_id), worker.log.read_text()
    assert (job.status, job.attempts, claims(settings, job_id)) == ("succeeded", 1, 1), log[-3000:]
    assert f"training job {job_id} is already succeeded: nothing to do" in log
    record_property("jobs lost after a Redis restart", 0 if job.status == "succeeded" else 1)


def test_two_deliveries_at_once_train_once(settings: Settings, tmp_path: Path) -> None:
    job_id = make_job(settings, make_dataset(settings, tmp_path, patients=3, frames=1))
    outcome: list[str] = []
    first = threading.Thread(target=lambda: outcome.append(run_training_job(settings, job_id)))
    first.start()
    try:
        wait_for(lambda: load_job(settings, job_id).status != "queued", timeout=30, what="the first claim")
        assert run_training_job(settings, job_id) == SKIPPED
    finally:
        first.join(timeout=180)
    assert outcome == [JobStatus.SUCCEEDED.value]
    assert (load_job(settings, job_id).attempts, claims(settings, job_id)) == (1, 1)
    assert run_training_job(settings, job_id) == SKIPPED


def _queued_evaluation(settings: Settings, tmp_path: Path) -> str:
    dataset_id = make_dataset(settings, tmp_path, patients=2, frames=1)
    job_id = make_job(settings, dataset_id, status=JobStatus.SUCCEEDED.value)
    with session_scope(settings.sqlalchemy_url) as session:
        model = Model(
            job_id=job_id,
            onnx_key="absent.onnx",
            manifest_key="absent.json",
            onnx_sha256="0" * 64,
            classes=[],
            preset="mri",
            size=32,
            metrics={},
        )
        session.add(model)
        session.flush()
        report = Report(source="evaluation", model_id=model.id, dataset_id=dataset_id, split="val")
        session.add(report)
        session.flush()
        return report.id


def test_a_queued_evaluation_without_a_message_is_resent(settings: Settings, tmp_path: Path) -> None:
    report_id = _queued_evaluation(settings, tmp_path)
    time.sleep(THRESHOLD_S)
    assert recover_lost_messages(settings) == [report_id]
    assert on_broker(settings, report_id)
    assert recover_lost_messages(settings) == []


def test_the_embedded_broker_is_read_too(tmp_path: Path) -> None:
    settings = Settings(MONA_DATA_DIR=tmp_path / "data")  # type: ignore[call-arg]
    app = make_celery(settings)
    assert messages_on_broker(app, settings) == ""
    send_train(app, "0123456789abcdef0123456789abcdef")
    assert "0123456789abcdef0123456789abcdef" in (messages_on_broker(app, settings) or "")
