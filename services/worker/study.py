"""The ``study`` job: labelled ratios × methods on one dataset under one budget, as one job.

Runs ``mona_core.training.study.run_study`` in the job's run directory with the same lease (heartbeat, cancel)
and progress writer as a training job; the Table-I-style report lands in ``jobs.result`` (JSON + markdown) and the
plot in the artifact store. Cells already finished by an earlier attempt are reused, unfinished ones resume.
"""

from __future__ import annotations

import logging

from mona_core.training.config import StudyConfig
from mona_core.training.progress import ProgressFn
from mona_core.training.study import run_study
from services.common.datasets import dataset_index
from services.common.db import session_scope
from services.common.jobs import append_log, finish_job, record_progress
from services.common.models import JobStatus, TrainingJob
from services.common.settings import Settings
from services.common.storage import ArtifactStore
from services.worker.recovery import JobLease

logger = logging.getLogger(__name__)


def run_study_job(
    settings: Settings, store: ArtifactStore, job_id: str, me: str, lease: JobLease, writer: ProgressFn
) -> str:
    """Run a claimed study job to its end (or until cancelled); returns the status it ended in."""
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get_one(TrainingJob, job_id)
        study, dataset_id = StudyConfig.from_dict(dict(job.config)), job.dataset_id
        index = dataset_index(session, store, dataset_id)
        record_progress(session, job_id, me, {"total_iterations": study.total_iterations, "stage": "study"})
        append_log(session, job_id, f"study: {len(study.methods)} methods x {len(study.ratios)} ratios")
    run_dir = store.run_dir(job_id)
    report = run_study(study, index, run_dir, progress=writer, should_stop=lease.should_stop)
    with session_scope(settings.sqlalchemy_url) as session:
        if report is None:
            step = session.get_one(TrainingJob, job_id).iteration
            finish_job(session, job_id, me, JobStatus.CANCELLED, stage="cancelled")
            append_log(session, job_id, f"study cancelled at step {step} of {study.total_iterations}")
            logger.info("study job %s cancelled at step %d", job_id, step)
            return JobStatus.CANCELLED.value
        figure = store.copy_in(run_dir / "study.png", ".png").key
        finish_job(
            session,
            job_id,
            me,
            JobStatus.SUCCEEDED,
            stage="done",
            progress=1.0,
            result={**report, "figure_key": figure},
        )
        append_log(session, job_id, "study done")
    return JobStatus.SUCCEEDED.value
