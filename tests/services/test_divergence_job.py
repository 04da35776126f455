"""A diverging training job ends ``failed`` with the divergence message, and publishes no model."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from mona_core.training.config import TrainConfig
from services.common.db import session_scope
from services.common.models import JobStatus, Model
from services.common.settings import Settings
from services.worker.training import run_training_job
from tests.services.test_worker import load_job, log_lines, make_dataset, make_job

# lr 10 passes the submit bounds; on these phantoms its loss passes max_loss (1e6) near step 10 of 40.
DIVERGING = TrainConfig(iterations=40, size=32, batch_size=2, lr=10.0, val_every=20, checkpoint_every=20, device="cpu")


def test_a_diverging_job_fails_clearly_and_publishes_no_model(
    service_settings: Settings, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    dataset_id = make_dataset(service_settings, tmp_path)
    job_id = make_job(service_settings, dataset_id, DIVERGING, labelled_patients=2)
    assert run_training_job(service_settings, job_id) == JobStatus.FAILED.value
    job = load_job(service_settings, job_id)
    assert job.status == "failed" and job.model_id is None and job.finished_at is not None
    assert job.error is not None
    assert re.fullmatch(
        r"TrainingDiverged: training diverged at step \d+: loss_\w+ = \S+ > max_loss 1e\+06 \(lr 10\)", job.error
    )
    assert job.iteration < DIVERGING.iterations
    assert ("ERROR", job.error) in log_lines(service_settings, job_id)
    with session_scope(service_settings.sqlalchemy_url) as session:
        published = session.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id))
    record_property("diverged job: models published", published)
    assert published == 0
