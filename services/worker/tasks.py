"""The worker's tasks, registered under the names of ``services.common.tasks``. Thin: an id in, a status out.

Each task reads the settings from the environment and hands the id to its runner (``training``, ``evaluation``,
``recovery``); the runners do the work and are called directly by the tests.
"""

from __future__ import annotations

import logging

from services.common.settings import get_settings
from services.common.tasks import EVALUATE_TASK, RECOVER_TASK, TRAIN_TASK
from services.worker.app import app
from services.worker.evaluation import run_evaluation
from services.worker.recovery import recover_lost_messages, recover_stale_jobs
from services.worker.training import run_training_job

logger = logging.getLogger(__name__)


def train_job(job_id: str) -> str:
    """``mona.train``: run or resume training job ``job_id`` (a no-op for a finished job or one running elsewhere)."""
    return run_training_job(get_settings(), job_id)


def evaluate_report(report_id: str) -> str:
    """``mona.evaluate``: score a model on a dataset split into report ``report_id``."""
    return run_evaluation(get_settings(), report_id)


def recover() -> list[str]:
    """``mona.recover``: requeue running jobs whose worker stopped beating, re-send queued jobs whose message was
    lost; returns their ids."""
    settings = get_settings()
    return recover_stale_jobs(settings) + recover_lost_messages(settings)


train_task = app.task(name=TRAIN_TASK)(train_job)
evaluate_task = app.task(name=EVALUATE_TASK)(evaluate_report)
recover_task = app.task(name=RECOVER_TASK)(recover)
